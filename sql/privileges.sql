-- Nothing is callable by PUBLIC. Applications get EXECUTE on the functions
-- they need (see README "Roles and privileges"), never access to otp.*.
REVOKE ALL ON ALL TABLES IN SCHEMA otp FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA otp FROM PUBLIC;

DO $revoke$
DECLARE
    member regprocedure;
BEGIN
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
END
$revoke$;

-- Two group roles, created if missing (roles belong to the whole cluster and
-- outlive DROP EXTENSION). Grant them to login roles:
--   GRANT otp_app TO chat_app;  GRANT otp_dispatcher TO otp_sender;
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'otp_app') THEN
        CREATE ROLE otp_app NOLOGIN;
        COMMENT ON ROLE otp_app IS 'pg_otp: may call otp_issue, otp_verify, otp_status, otp_events, session_touch, session_revoke';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'otp_dispatcher') THEN
        CREATE ROLE otp_dispatcher NOLOGIN;
        COMMENT ON ROLE otp_dispatcher IS 'pg_otp: may use the outbox protocol (otp_outbox_*) only';
    END IF;
END
$roles$;

GRANT USAGE ON SCHEMA @extschema@ TO otp_app, otp_dispatcher;
GRANT EXECUTE ON FUNCTION
    @extschema@.otp_issue(text, text, text),
    @extschema@.otp_verify(text, text, text),
    @extschema@.otp_status(text, text),
    @extschema@.otp_events(text, text, interval, integer),
    @extschema@.session_touch(text),
    @extschema@.session_revoke(text)
TO otp_app;
GRANT EXECUTE ON FUNCTION
    @extschema@.otp_outbox_claim(integer, interval),
    @extschema@.otp_outbox_sent(bigint, text),
    @extschema@.otp_outbox_failed(bigint, text, boolean),
    @extschema@.otp_outbox_expired(bigint)
TO otp_dispatcher;

-- Generic plans for every statement these functions run: pg_otp prepares
-- each statement once per connection, and its statements are short index
-- lookups whose best plan does not depend on the values. Left to choose,
-- PostgreSQL's plan cache may keep planning each call anew (a custom plan
-- costs more planning time than most of these statements take to run).
ALTER FUNCTION @extschema@.otp_issue(text, text, text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_verify(text, text, text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_status(text, text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.session_touch(text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.session_revoke(text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_outbox_claim(integer, interval) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_outbox_sent(bigint, text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_outbox_failed(bigint, text, boolean) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_outbox_expired(bigint) SET plan_cache_mode = force_generic_plan;
