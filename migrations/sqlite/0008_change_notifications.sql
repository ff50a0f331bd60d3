-- Revocations pushed to every instance at once (sqlite): nothing to do. One SQLite file
-- serves one instance, which polls it; PostgreSQL's migration adds the notifications.
-- Never edit this file once released: add a new one.
SELECT 1;
