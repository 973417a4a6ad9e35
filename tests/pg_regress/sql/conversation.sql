-- The example conversation, end to end. The agent is a program connected as
-- chat_app; the dispatcher (played here by psql as otp_sender) reads the code
-- from the outbox. Codes are random, so this script keeps them in psql
-- variables and prints only statuses, never a code.

-- User:  "I want to check my pay stub."
-- Agent: "Sure. What is your employee number?"
-- User:  "4721"
SET ROLE chat_app;
SELECT status, channel, destination_hint, expires_at > now() AS expires_later, session_token
  FROM otp_issue(agent => 'payroll', conversation => 'wa:34600123478', identifier => '4721');
-- Agent: "I sent a 6-digit code to your WhatsApp number ending in 78."

-- Meanwhile the dispatcher claims the message and delivers it.
SET ROLE otp_sender;
SELECT message_id, code AS delivered_code, destination, channel, attempt
  FROM otp_outbox_claim() WHERE conversation = 'wa:34600123478' \gset
SELECT :'destination' AS destination, :'channel' AS channel, :attempt AS attempt;
SELECT otp_outbox_sent(:message_id, :attempt, 'wamid.HBgLMzQ2MDAxMjM0NzgVAgARGBI');

-- The agent can check where the code stands ("did it arrive?").
SET ROLE chat_app;
SELECT status, channel, destination_hint, delivery, attempts_remaining
  FROM otp_status(agent => 'payroll', conversation => 'wa:34600123478');

-- User: "483921" (a typo)
SET ROLE chat_app;
SELECT CASE WHEN :'delivered_code' = '483921' THEN '483922' ELSE '483921' END AS typo \gset
SELECT status, attempts_remaining, session_token, subject
  FROM otp_verify(agent => 'payroll', conversation => 'wa:34600123478', code => :'typo');
-- Agent: "That code is not right. 2 attempts remaining."

-- User types the code from WhatsApp, with a space as phones show it.
SELECT substr(:'delivered_code', 1, 3) || ' ' || substr(:'delivered_code', 4) AS typed \gset
SELECT status, attempts_remaining, session_token AS token, subject
  FROM otp_verify(agent => 'payroll', conversation => 'wa:34600123478', code => :'typed') \gset
SELECT :'status' AS status, :'subject' AS subject, length(:'token') AS token_length;
-- Agent: "Thanks, Ana. Here is your latest pay stub:" The agent's turn is a
-- transaction bound to the session: the table shows only Ana's row.
BEGIN;
SELECT status FROM session_use(:'token');
SELECT full_name, net_pay FROM hr.employees;
COMMIT;

-- The same code never works twice.
SELECT status FROM otp_verify('payroll', 'wa:34600123478', :'delivered_code');

-- Later turns keep the session alive (session_touch, or session_use in the
-- turn's transaction).
SELECT status, agent, conversation, subject, idle_expires_at <= expires_at AS idle_within_absolute
  FROM session_touch(:'token');

-- 31 minutes of silence (the DBA moves the idle deadline into the past).
RESET ROLE;
UPDATE otp.session SET idle_expires_at = clock_timestamp() - interval '1 second'
 WHERE conversation = 'wa:34600123478';
SET ROLE chat_app;
SELECT status, subject FROM session_touch(:'token');
-- Agent: "For your security I closed our session. Send your employee number to start again."

-- Another user guesses three times: the process is cancelled.
SELECT status, channel, destination_hint FROM otp_issue('payroll', 'web:7f3a', '5108');
SET ROLE otp_sender;
SELECT code AS bo_code FROM otp_outbox_claim() WHERE conversation = 'web:7f3a' \gset
SET ROLE chat_app;
SELECT lpad(((:'bo_code'::int + 1) % 1000000)::text, 6, '0') AS wrong \gset
SELECT status, attempts_remaining FROM otp_verify('payroll', 'web:7f3a', :'wrong');
SELECT status, attempts_remaining FROM otp_verify('payroll', 'web:7f3a', :'wrong');
SELECT status, attempts_remaining FROM otp_verify('payroll', 'web:7f3a', :'wrong');
-- Even the right code is refused now: the user must start again with otp_issue.
SELECT status FROM otp_verify('payroll', 'web:7f3a', :'bo_code');

-- People without a destination, and numbers nobody has.
SELECT status, channel, destination_hint FROM otp_issue('payroll', 'web:8c1d', '6230');
SELECT status, channel, destination_hint FROM otp_issue('payroll', 'web:8c1d', '9999');

-- The user ends the conversation.
SELECT session_revoke(:'token') AS revoked;
SELECT status FROM session_touch(:'token');
RESET ROLE;

-- What the tables hold: hashes and hints, never a code.
SELECT conversation, subject, channel, destination_hint, state, attempts_used, delivery,
       octet_length(code_hash) AS hash_bytes
  FROM otp.challenge ORDER BY id;
SELECT conversation, channel, state, attempt, provider_ref, code_sealed IS NULL AS code_erased
  FROM otp.outbox ORDER BY id;

-- The audit trail the agent can read: "someone asked for a code for your
-- account at 10:42". Events and channels, never a code (times vary, so they
-- are not shown here).
SET ROLE chat_app;
SELECT event, conversation, channel, destination_hint FROM otp_events('payroll', '4721');
SELECT event, conversation, channel, destination_hint FROM otp_events('payroll', '5108');
RESET ROLE;
