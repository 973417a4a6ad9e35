-- Rotating the server secret. The current otp.secret_key becomes
-- otp.previous_secret_key and a new secret is set; after a reload, codes
-- issued and messages queued under the old secret keep working, new codes
-- use the new one. Once the previous secret is removed, a code made under
-- it can no longer be checked: it has expired. Send limits count the codes
-- made under both secrets (the other tests already sent a few to 4721's
-- phone: room for them here).
SELECT otp_configure(agent => 'rotating', source => 'hr.employees', id_column => 'employee_no',
                     phone_column => 'whatsapp', email_column => 'email', resend_cooldown => '0',
                     max_codes => 20);
SELECT current_setting('otp.secret_key') AS old_secret \gset

-- Before the rotation: a code delivered, a code delivered but never typed,
-- and a message still queued.
SET ROLE chat_app;
SELECT status FROM otp_issue('rotating', 'rot:sent', '4721');
SELECT status FROM otp_issue('rotating', 'rot:stale', '5108');
SET ROLE otp_sender;
SELECT max(code) FILTER (WHERE conversation = 'rot:sent') AS sent_code,
       max(code) FILTER (WHERE conversation = 'rot:stale') AS stale_code
  FROM otp_outbox_claim() \gset
SET ROLE chat_app;
SELECT status FROM otp_issue('rotating', 'rot:queued', '4721');
RESET ROLE;

-- The rotation (a DBA runs these three lines).
ALTER SYSTEM SET otp.previous_secret_key = :'old_secret';
ALTER SYSTEM SET otp.secret_key = '0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0';
SELECT pg_reload_conf();
\set setting otp.secret_key
\set expected 0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0
\set polls 0
\set ECHO none
\i tests/pg_regress/sql/wait_for_setting.psql
\set ECHO all

-- The code sent before verifies; the message queued before is delivered
-- (opened with the previous secret) and its code verifies; a new code works.
SET ROLE chat_app;
SELECT status FROM otp_verify('rotating', 'rot:sent', :'sent_code');
SET ROLE otp_sender;
SELECT code AS queued_code FROM otp_outbox_claim() WHERE conversation = 'rot:queued' \gset
SET ROLE chat_app;
SELECT status FROM otp_verify('rotating', 'rot:queued', :'queued_code');
SELECT status FROM otp_issue('rotating', 'rot:new', '4721');
SET ROLE otp_sender;
SELECT code AS new_code FROM otp_outbox_claim() WHERE conversation = 'rot:new' \gset
SET ROLE chat_app;
SELECT status FROM otp_verify('rotating', 'rot:new', :'new_code');
RESET ROLE;

-- The rotation ends: the previous secret is removed. The code made under it
-- and never typed can no longer be checked.
ALTER SYSTEM RESET otp.previous_secret_key;
SELECT pg_reload_conf();
\set setting otp.previous_secret_key
\set expected ''
\set polls 0
\set ECHO none
\i tests/pg_regress/sql/wait_for_setting.psql
\set ECHO all
SET ROLE chat_app;
SELECT status, attempts_remaining FROM otp_verify('rotating', 'rot:stale', :'stale_code');
RESET ROLE;

-- Back to the cluster's own secret for the tests that follow.
ALTER SYSTEM RESET otp.secret_key;
SELECT pg_reload_conf();
\set setting otp.secret_key
\set expected :old_secret
\set polls 0
\set ECHO none
\i tests/pg_regress/sql/wait_for_setting.psql
\set ECHO all
SELECT current_setting('otp.secret_key') = :'old_secret' AS own_secret_back;
