-- Revocations pushed to every instance at once (postgres).
-- Never edit this file once released: add a new one.

-- Each statement that records changes notifies the channel every instance listens on;
-- the instances then read the changes table as they do when they poll. The payload is
-- empty: the table is the truth, the notification only says "look now".
CREATE FUNCTION postern_notify_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('postern_changes', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER changes_notify AFTER INSERT ON changes
    FOR EACH STATEMENT EXECUTE FUNCTION postern_notify_changes();
