-- Login penalties and sending quotas shared by every instance (sqlite): nothing to do.
-- One SQLite file serves one instance, which keeps them in its memory.
-- Never edit this file once released: add a new one.
SELECT 1;
