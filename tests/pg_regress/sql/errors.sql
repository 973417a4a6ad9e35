-- Mistakes by the calling program or the administrator are ERRORs with a
-- SQLSTATE (printed after each); nothing is written when they happen.
SELECT * FROM otp_issue(NULL, 'conv', '4721');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM otp_issue('payroll', '', '4721');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM otp_issue('payroll', 'conv', NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM otp_issue('nobody', 'conv', '4721');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM otp_verify('payroll', 'conv', NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM session_touch(NULL);
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Bad configuration is refused with a reason.
SELECT otp_configure('bad', 'hr.employees', 'employee_no');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT otp_configure('bad', 'hr.employees', 'employee_no', phone_column => 'mobile');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT otp_configure('bad', 'hr.nothing', 'employee_no', 'whatsapp');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT otp_configure('bad', 'hr.employees', 'employee_no', 'whatsapp', code_ttl => '-5 minutes');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT otp_configure('bad', 'hr.employees', 'employee_no', 'whatsapp', max_attempts => 0);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT otp_configure('bad', 'hr.employees', 'employee_no', 'whatsapp', idle_timeout => '2 days');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT otp_configure('bad', 'hr.employees', 'employee_no', 'whatsapp', preferred_channel => 'sms');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) AS bad_agents FROM otp.agent WHERE name = 'bad';

-- A source that changes under its configuration is reported, not guessed at.
CREATE TABLE hr.contractors (contractor_id text PRIMARY KEY, mobile text);
INSERT INTO hr.contractors VALUES ('C-1', '+1 555 0100');
SELECT otp_configure('contractors', 'hr.contractors', 'contractor_id', 'mobile');
ALTER TABLE hr.contractors DROP COLUMN mobile;
SELECT * FROM otp_issue('contractors', 'conv-c', 'C-1');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT count(*) AS challenges FROM otp.challenge WHERE agent = 'contractors';

-- Odd input from users is a status, not an error.
SELECT status FROM otp_issue('payroll', 'conv-odd', repeat('9', 10000));
SELECT status FROM otp_issue('payroll', 'conv-odd', '4721'' OR ''1''=''1');
SELECT status, attempts_remaining FROM otp_verify('payroll', 'conv-odd', 'abcdef');
SELECT status, attempts_remaining FROM otp_verify('payroll', 'conv-odd', '١٢٣٤٥٦');
