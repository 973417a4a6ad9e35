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
