-- A DBA installs pg_otp and configures the "payroll" agent of the example
-- conversation over an HR table, with one role for the chat application and
-- one for the delivery process.
CREATE EXTENSION pg_otp;

CREATE SCHEMA hr;
CREATE TABLE hr.employees (
    employee_no text PRIMARY KEY,
    full_name   text NOT NULL,
    whatsapp    text,
    email       text,
    net_pay     numeric(10, 2)
);
INSERT INTO hr.employees VALUES
    ('4721', 'Ana Ruiz',  '+34 600 123 478', 'ana.ruiz@example.com', 2150.00),
    ('5108', 'Bo Lind',   NULL,              'bo.lind@example.com',  1980.50),
    ('6230', 'Cy Okafor', NULL,              NULL,                   1800.00);

-- "Authenticate conversation" on, "Require OTP" on (the default).
SELECT otp_configure(agent => 'payroll', source => 'hr.employees', id_column => 'employee_no',
                     phone_column => 'whatsapp', email_column => 'email');
SELECT name, source, id_column, phone_column, email_column, require_otp, code_ttl, max_attempts,
       idle_timeout, absolute_timeout, preferred_channel
  FROM otp.agent;

-- CREATE EXTENSION made two group roles: otp_app may call the conversation
-- functions, otp_dispatcher the outbox protocol. Login roles join them.
-- (Roles belong to the whole cluster, so create them only once.)
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'chat_app') THEN
        CREATE ROLE chat_app LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'otp_sender') THEN
        CREATE ROLE otp_sender LOGIN;
    END IF;
END
$$;
SET client_min_messages = warning; -- quiet "already a member" on a reused cluster
GRANT otp_app TO chat_app;
GRANT otp_dispatcher TO otp_sender;
RESET client_min_messages;

-- The application reads pay stubs, and PostgreSQL itself shows it only the
-- row of the person whose verified session its transaction uses (see
-- data_access.sql). pg_otp reads the table as its owner, so the policy does
-- not hide anyone from pg_otp.
GRANT USAGE ON SCHEMA hr TO chat_app;
GRANT SELECT ON hr.employees TO chat_app;
ALTER TABLE hr.employees ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_record ON hr.employees FOR SELECT TO chat_app
    USING (employee_no = (SELECT otp_subject('payroll')));
