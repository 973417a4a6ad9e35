-- Sessions that guard the data. The chat application's role may read
-- hr.employees, but a row-level security policy (setup.sql) shows it only
-- the row of the person whose verified session the current transaction
-- uses: session_use(token) binds the transaction, otp_subject('payroll')
-- answers for it. The binding lives in the backend's memory and ends with
-- the transaction; no setting can make one.
SELECT polname, pg_get_expr(polqual, polrelid) AS policy
  FROM pg_policy WHERE polrelid = 'hr.employees'::regclass;
-- (Send limits out of the way: the earlier files sent Ana several codes.)
SELECT otp_configure(agent => 'payroll', source => 'hr.employees', id_column => 'employee_no',
                     phone_column => 'whatsapp', email_column => 'email',
                     max_codes => 100, resend_cooldown => '0');

-- Before verification, the application sees no one.
SET ROLE chat_app;
SELECT count(*) AS visible FROM hr.employees;

-- Ana verifies her code (the dispatcher's part played by psql).
SELECT status FROM otp_issue('payroll', 'wa:data', '4721');
SET ROLE otp_sender;
SELECT code AS ana_code FROM otp_outbox_claim() WHERE conversation = 'wa:data' \gset
SET ROLE chat_app;
SELECT session_token AS ana_token FROM otp_verify('payroll', 'wa:data', :'ana_code') \gset

-- A turn of the conversation: one transaction, bound to her session.
BEGIN;
SELECT status, subject FROM session_use(:'ana_token');
SELECT employee_no, full_name, net_pay FROM hr.employees;
-- "I am 4721; now show me 5108's pay stub": the database says nothing.
SELECT count(*) AS other_people FROM hr.employees WHERE employee_no = '5108';
COMMIT;

-- The next transaction is bound to nobody until it uses a session.
SELECT count(*) AS visible FROM hr.employees;

-- A setting cannot stand in for the binding.
BEGIN;
SELECT set_config('app.subject', '4721', true) IS NOT NULL AS forged;
SELECT count(*) AS visible FROM hr.employees;
COMMIT;

-- A binding made in a savepoint that rolls back is gone with it.
BEGIN;
SAVEPOINT turn;
SELECT status FROM session_use(:'ana_token');
ROLLBACK TO SAVEPOINT turn;
SELECT count(*) AS visible FROM hr.employees;
COMMIT;

-- Once the session is over, using it binds nothing.
RESET ROLE;
UPDATE otp.session SET idle_expires_at = clock_timestamp() - interval '1 second'
 WHERE conversation = 'wa:data';
SET ROLE chat_app;
BEGIN;
SELECT status, subject FROM session_use(:'ana_token');
SELECT count(*) AS visible FROM hr.employees;
COMMIT;

-- Her phone number changes: a code sent to the old number no longer
-- verifies, and neither does a session started by one.
SELECT status FROM otp_issue('payroll', 'wa:data-2', '4721');
SET ROLE otp_sender;
SELECT code AS second_code FROM otp_outbox_claim() WHERE conversation = 'wa:data-2' \gset
SET ROLE chat_app;
SELECT session_token AS second_token FROM otp_verify('payroll', 'wa:data-2', :'second_code') \gset
SELECT status FROM otp_issue('payroll', 'wa:data-3', '4721');
SET ROLE otp_sender;
SELECT code AS third_code FROM otp_outbox_claim() WHERE conversation = 'wa:data-3' \gset
RESET ROLE;
UPDATE hr.employees SET whatsapp = '+34 611 000 111' WHERE employee_no = '4721';
SET ROLE chat_app;
SELECT status, attempts_remaining FROM otp_verify('payroll', 'wa:data-3', :'third_code');
SELECT status FROM session_touch(:'second_token');
RESET ROLE;
UPDATE hr.employees SET whatsapp = '+34 600 123 478' WHERE employee_no = '4721';

-- The person's sessions, for the agent to list and end (the employee left).
SET ROLE chat_app;
SELECT status FROM otp_issue('payroll', 'wa:data-4', '4721');
SET ROLE otp_sender;
SELECT code AS fourth_code FROM otp_outbox_claim() WHERE conversation = 'wa:data-4' \gset
SET ROLE chat_app;
SELECT status FROM otp_verify('payroll', 'wa:data-4', :'fourth_code');
SELECT conversation, started_at <= last_used_at AS used FROM otp_sessions('payroll', '4721');
SELECT session_revoke_all('payroll', '4721') AS ended;
SELECT count(*) AS active FROM otp_sessions('payroll', '4721');
RESET ROLE;
SELECT otp_configure(agent => 'payroll', source => 'hr.employees', id_column => 'employee_no',
                     phone_column => 'whatsapp', email_column => 'email');
