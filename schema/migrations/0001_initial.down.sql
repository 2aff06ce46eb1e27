-- Reverts 0001_initial. Extensions stay: other databases objects may use them, and dropping
-- timescaledb needs a superuser.
DROP SCHEMA rpm CASCADE;
