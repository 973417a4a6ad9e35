-- Nothing is callable by PUBLIC. Applications get EXECUTE on the functions
-- they need (see docs/install.md, "Roles and privileges"), never access to otp.*.
--
-- A note on names: this script runs as the superuser installing pg_otp, with
-- search_path set to the schema pg_otp goes into, which others may be able
-- to create objects in (public). PostgreSQL looks in pg_catalog first, but
-- an expression without an exact match there (oid = regclass, name =
-- unknown) could pick an operator planted in that schema. So every DO block
-- below resolves its names in pg_catalog only, and the other statements
-- name only pg_catalog's types and @extschema@'s functions.
REVOKE ALL ON ALL TABLES IN SCHEMA otp FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA otp FROM PUBLIC;

DO $revoke$
DECLARE
    saved_path text := pg_catalog.current_setting('search_path');
    member regprocedure;
BEGIN
    -- Resolve every name in this block in pg_catalog only (see the note above).
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    FOR member IN
        SELECT d.objid::regprocedure
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
         WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.classid = 'pg_catalog.pg_proc'::regclass
           AND d.deptype = 'e'
           AND e.extname = 'pg_otp'
    LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', member);
    END LOOP;
    PERFORM pg_catalog.set_config('search_path', saved_path, true);
END
$revoke$;

-- Three group roles, created if missing (roles belong to the whole cluster
-- and outlive DROP EXTENSION). Grant the first two to login roles:
--   GRANT otp_app TO chat_app;  GRANT otp_dispatcher TO otp_sender;
-- otp_owner owns pg_otp's state and runs its SECURITY DEFINER functions: no
-- login, no members, no attributes, so that whatever might run inside those
-- functions gains pg_otp's own tables and nothing else (not the superuser
-- who installed it). The secret is read in C, not through any privilege.
DO $roles$
DECLARE
    saved_path text := pg_catalog.current_setting('search_path');
BEGIN
    -- Resolve every name in this block in pg_catalog only (see the note above).
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'otp_owner') THEN
        CREATE ROLE otp_owner NOLOGIN;
        COMMENT ON ROLE otp_owner IS 'pg_otp: owns schema otp and runs the SECURITY DEFINER functions; never grant it to anyone';
    ELSIF EXISTS (SELECT FROM pg_catalog.pg_roles
                   WHERE rolname = 'otp_owner'
                     AND (rolcanlogin OR rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls))
       OR EXISTS (SELECT FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles r ON r.oid = m.roleid
                   WHERE r.rolname = 'otp_owner') THEN
        RAISE EXCEPTION 'pg_otp: role otp_owner already exists and can log in, has attributes or has members'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Whoever can act as otp_owner could read and change all of pg_otp''s state. '
                         'Drop the role (or remove its members and attributes) before CREATE EXTENSION.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'otp_app') THEN
        CREATE ROLE otp_app NOLOGIN;
        COMMENT ON ROLE otp_app IS 'pg_otp: may call the conversation and session functions (otp_issue, otp_verify, session_use, ...)';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'otp_dispatcher') THEN
        CREATE ROLE otp_dispatcher NOLOGIN;
        COMMENT ON ROLE otp_dispatcher IS 'pg_otp: may use the outbox protocol (otp_outbox_*) only';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'otp_admin') THEN
        CREATE ROLE otp_admin NOLOGIN;
        COMMENT ON ROLE otp_admin IS 'pg_otp: may configure agents (otp_configure) on sources its members own';
    END IF;
    PERFORM pg_catalog.set_config('search_path', saved_path, true);
END
$roles$;

GRANT USAGE ON SCHEMA @extschema@ TO otp_app, otp_dispatcher;
GRANT EXECUTE ON FUNCTION
    @extschema@.otp_issue(text, text, text),
    @extschema@.otp_verify(text, text, text),
    @extschema@.otp_status(text, text),
    @extschema@.otp_events(text, text, interval, integer),
    @extschema@.session_touch(text),
    @extschema@.session_use(text),
    @extschema@.otp_subject(text),
    @extschema@.otp_sessions(text, text),
    @extschema@.session_revoke(text),
    @extschema@.session_revoke_all(text, text)
TO otp_app;
GRANT USAGE ON SCHEMA @extschema@ TO otp_admin;
GRANT EXECUTE ON FUNCTION
    @extschema@.otp_configure(text, regclass, text, text, text, boolean, interval, integer, interval,
                              interval, text, integer, interval, interval, integer, interval, boolean, text, text, text)
TO otp_admin;
GRANT EXECUTE ON FUNCTION
    @extschema@.otp_outbox_claim(integer, interval),
    @extschema@.otp_outbox_sent(bigint, integer, text),
    @extschema@.otp_outbox_failed(bigint, integer, text, boolean),
    @extschema@.otp_outbox_expired(bigint, integer),
    @extschema@.otp_outbox_sweep(),
    @extschema@.otp_outbox_status(text, bigint, text, timestamptz, text, boolean)
TO otp_dispatcher;

-- Everything of pg_otp belongs to otp_owner (see above).
DO $owner$
DECLARE
    saved_path text := pg_catalog.current_setting('search_path');
    member record;
BEGIN
    -- Resolve every name in this block in pg_catalog only (see the note above).
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    ALTER SCHEMA otp OWNER TO otp_owner;
    FOR member IN
        SELECT pg_catalog.format('ALTER %s %s OWNER TO otp_owner',
                   CASE d.classid WHEN 'pg_catalog.pg_proc'::pg_catalog.regclass THEN 'FUNCTION'
                                  ELSE 'TABLE'   -- with its indexes and sequences
                   END,
                   CASE d.classid WHEN 'pg_catalog.pg_proc'::pg_catalog.regclass THEN d.objid::pg_catalog.regprocedure::text
                                  ELSE d.objid::pg_catalog.regclass::text
                   END) AS statement
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_otp'
          LEFT JOIN pg_catalog.pg_class c ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND c.oid = d.objid
         WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
           AND d.deptype = 'e'
           AND (d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                OR (d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND c.relkind IN ('r', 'p')))
    LOOP
        EXECUTE member.statement;
    END LOOP;
    PERFORM pg_catalog.set_config('search_path', saved_path, true);
END
$owner$;

-- Generic plans for every statement these functions run: pg_otp prepares
-- each statement once per connection, and its statements are short index
-- lookups whose best plan does not depend on the values. Left to choose,
-- PostgreSQL's plan cache may keep planning each call anew (a custom plan
-- costs more planning time than most of these statements take to run).
--
-- No sequential scans of pg_otp's tables either: a connection keeps its
-- plans until the table's statistics change, so a plan made while a table
-- was small (a new installation, before autovacuum first analyzes it)
-- would read the whole table at every call for as long as the connection
-- lives (issue 14 measured 2 ms and 230 buffers for a 0.2 ms statement).
-- The claim walks outbox_due in its order, never as a bitmap: an ordered
-- index scan stops at the batch and marks the entries of finished messages
-- dead as it passes them; a bitmap scan visits every entry vacuum has not
-- yet removed, at every claim.
ALTER FUNCTION @extschema@.otp_issue(text, text, text) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_verify(text, text, text) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_status(text, text) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION @extschema@.session_touch(text) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION @extschema@.session_revoke(text) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION @extschema@.session_use(text) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_sessions(text, text) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION @extschema@.session_revoke_all(text, text) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_outbox_claim(integer, interval)
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off;
ALTER FUNCTION @extschema@.otp_outbox_sent(bigint, integer, text) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_outbox_failed(bigint, integer, text, boolean) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_outbox_expired(bigint, integer) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_outbox_sweep() SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_outbox_status(text, bigint, text, timestamptz, text, boolean)
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
