-- Real expiry with a short code_ttl. The waits go past a fixed deadline, so
-- the outcome does not depend on timing.
SELECT otp_configure(agent => 'quick', source => 'hr.employees', id_column => 'employee_no',
                     phone_column => 'whatsapp', code_ttl => '1 second', resend_cooldown => '0');

-- A code typed after its TTL is expired, costs no attempt, and is gone.
SELECT status FROM otp_issue('quick', 'conv-late', '4721');
SELECT code AS late_code FROM otp_outbox_claim() WHERE conversation = 'conv-late' \gset
SELECT pg_sleep(1.2);
SELECT status, attempts_remaining FROM otp_verify('quick', 'conv-late', :'late_code');
SELECT status, attempts_remaining FROM otp_verify('quick', 'conv-late', :'late_code');
SELECT state, attempts_used FROM otp.challenge WHERE conversation = 'conv-late';

-- A message not claimed before its code expires is never handed out; the
-- sweep (which a dispatcher runs between claims) ends it and erases its code.
SELECT status FROM otp_issue('quick', 'conv-undelivered', '4721');
SELECT pg_sleep(1.2);
SELECT count(*) AS claimed FROM otp_outbox_claim() WHERE conversation = 'conv-undelivered';
SELECT finished >= 1 AS finished_some FROM otp_outbox_sweep();
SELECT state, code_sealed IS NULL AS code_erased FROM otp.outbox WHERE conversation = 'conv-undelivered';
SELECT delivery FROM otp.challenge WHERE conversation = 'conv-undelivered';
