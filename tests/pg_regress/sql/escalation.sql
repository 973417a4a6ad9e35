-- The owner of a configured source is not trusted with more than their own
-- rights. pg_otp reads the source as its owner, in a security-restricted
-- operation (as PostgreSQL does for ANALYZE and REFRESH MATERIALIZED VIEW),
-- so code the owner puts in the way of a lookup (a function in a view, a
-- cast of the id column) runs with the owner's rights, never pg_otp's.
-- (0.2.0 ran it as the superuser who created the extension.)
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hr_owner') THEN
        CREATE ROLE hr_owner LOGIN;   -- a plain role that owns an HR schema
    END IF;
END
$$;
ALTER ROLE hr_owner NOSUPERUSER;  -- (a reused cluster: as it must be)
CREATE SCHEMA hr2 AUTHORIZATION hr_owner;
SET ROLE hr_owner;
CREATE TABLE hr2.staff (id text PRIMARY KEY, phone text);
INSERT INTO hr2.staff VALUES ('s1', '+34 600 000 001');
CREATE VIEW hr2.staff_view AS SELECT id, phone FROM hr2.staff;
CREATE TYPE hr2.badge AS ENUM ('b1');
CREATE TABLE hr2.badged (id hr2.badge PRIMARY KEY, phone text);
INSERT INTO hr2.badged VALUES ('b1', '+34 600 000 002');
CREATE TABLE hr2.seen (who text, via text, refused text);
RESET ROLE;

SELECT otp_configure(agent => 'escalation-view', source => 'hr2.staff_view', id_column => 'id',
                     phone_column => 'phone');
SELECT otp_configure(agent => 'escalation-cast', source => 'hr2.badged', id_column => 'id',
                     phone_column => 'phone');

-- The owner turns both sources into traps: a function that tries to make
-- its owner a superuser, run by the view and by the cast pg_otp's lookup uses.
SET ROLE hr_owner;
CREATE FUNCTION hr2.pwn(via text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        ALTER ROLE hr_owner SUPERUSER;
        INSERT INTO hr2.seen VALUES (current_user, via, NULL);
    EXCEPTION WHEN OTHERS THEN
        -- not allowed: note why, and let the lookup carry on
        INSERT INTO hr2.seen VALUES (current_user, via, SQLSTATE);
    END;
    RETURN true;
END
$$;
CREATE OR REPLACE VIEW hr2.staff_view AS SELECT id, phone FROM hr2.staff WHERE hr2.pwn('view');
CREATE FUNCTION hr2.badge_text(hr2.badge) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM hr2.pwn('cast');
    RETURN $1::name::text;
END
$$;
CREATE CAST (hr2.badge AS text) WITH FUNCTION hr2.badge_text(hr2.badge);
RESET ROLE;

-- The chat application asks for codes as usual.
SET ROLE chat_app;
SELECT status FROM otp_issue('escalation-view', 'esc-1', 's1');
SELECT status FROM otp_issue('escalation-cast', 'esc-2', 'b1');
RESET ROLE;

-- The traps ran, as their owner, and gained nothing.
SELECT DISTINCT who, via, refused FROM hr2.seen ORDER BY via;
SELECT rolname, rolsuper FROM pg_roles WHERE rolname = 'hr_owner';

DELETE FROM otp.agent WHERE name LIKE 'escalation-%';
SET client_min_messages = warning;
DROP SCHEMA hr2 CASCADE;
RESET client_min_messages;
