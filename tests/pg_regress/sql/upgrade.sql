-- Upgrading from the last release. A database has pg_otp 0.3.0 with a code
-- in flight; the new version's library is already loaded (the package was
-- upgraded and PostgreSQL restarted). ALTER EXTENSION pg_otp UPDATE brings
-- the schema up to date, and the code still works.
CREATE DATABASE pg_otp_regress_upgrade;
\c pg_otp_regress_upgrade
CREATE EXTENSION pg_otp VERSION '0.3.0';
CREATE TABLE staff (id text PRIMARY KEY, whatsapp text);
INSERT INTO staff VALUES ('4721', '+34 600 123 478');
SELECT otp_configure(agent => 'payroll', source => 'staff', id_column => 'id', phone_column => 'whatsapp');
SELECT status, destination_hint FROM otp_issue('payroll', 'up:before', '4721');
SELECT code AS before_code FROM otp_outbox_claim() WHERE conversation = 'up:before' \gset

ALTER EXTENSION pg_otp UPDATE;
SELECT extversion <> '0.3.0' AS updated FROM pg_extension WHERE extname = 'pg_otp';

SELECT status, attempts_remaining FROM otp_status('payroll', 'up:before');
SELECT status, session_token IS NOT NULL AS has_session FROM otp_verify('payroll', 'up:before', :'before_code');

\c pg_otp_regress
DROP DATABASE pg_otp_regress_upgrade;
