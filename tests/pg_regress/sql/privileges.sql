-- Applications get EXECUTE on functions, never access to otp.*, never the secret.
SET ROLE chat_app;
SELECT * FROM otp.challenge;
SELECT * FROM otp.session;
SELECT * FROM otp_outbox_claim();
SELECT otp_configure('rogue', 'hr.employees', 'employee_no', 'whatsapp');
SHOW otp.secret_key;
SELECT current_setting('otp.secret_key');
SELECT count(*) AS visible FROM pg_settings WHERE name = 'otp.secret_key';
RESET ROLE;

-- The delivery process can use the outbox protocol and nothing else.
SET ROLE otp_sender;
SELECT * FROM otp_issue('payroll', 'conv-x', '4721');
SELECT * FROM otp.outbox;
SELECT count(*) >= 0 AS may_claim FROM otp_outbox_claim();
RESET ROLE;

-- Nobody may change the secret from a session.
SET otp.secret_key = '00';
SET otp.anything_else = 'x';

-- The group roles CREATE EXTENSION made, and what each may call.
SELECT r.rolname AS role, p.proname AS may_execute
  FROM pg_roles r
  JOIN pg_proc p ON has_function_privilege(r.oid, p.oid, 'EXECUTE')
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_otp'
 WHERE r.rolname IN ('otp_app', 'otp_dispatcher')
 ORDER BY 1, 2;

-- Every function: who runs it, with which search_path, and PUBLIC may call none.
SELECT p.oid::regprocedure AS function,
       p.prosecdef AS security_definer,
       p.proconfig AS settings,
       EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0) AS public_execute
  FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_otp'
 ORDER BY p.proname;

-- Everything of pg_otp belongs to otp_owner, a role that cannot log in and
-- has no members: the SECURITY DEFINER functions run with its rights, which
-- reach pg_otp's own tables and nothing else.
SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolbypassrls,
       (SELECT count(*) FROM pg_auth_members m WHERE m.roleid = r.oid) AS members
  FROM pg_roles r WHERE rolname = 'otp_owner';
SELECT 'function' AS kind, pg_get_userbyid(p.proowner) AS owner, count(*)
  FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_otp'
 GROUP BY 1, 2
UNION ALL
SELECT 'table', pg_get_userbyid(c.relowner), count(*)
  FROM pg_class c WHERE c.relnamespace = 'otp'::regnamespace AND c.relkind IN ('r', 'S')
 GROUP BY 1, 2
UNION ALL
SELECT 'schema', pg_get_userbyid(nspowner), 1 FROM pg_namespace WHERE nspname = 'otp'
 ORDER BY 1;
