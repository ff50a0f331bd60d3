-- The mail app of an app password's last use, as its IMAP ID named it (sqlite).
-- Never edit this file once released: add a new one.

ALTER TABLE app_passwords ADD COLUMN last_used_client TEXT;
