-- Abuse resistance. An agent with small limits so the rules are easy to see:
-- at most 2 codes per person (and per destination) per 15 minutes, 10 seconds
-- between codes, and 4 failed verifications in a row lock the person out.
SELECT otp_configure(agent => 'guarded', source => 'hr.employees', id_column => 'employee_no',
                     phone_column => 'whatsapp', email_column => 'email',
                     max_codes => 2, code_window => '15 minutes', resend_cooldown => '10 seconds',
                     lockout_threshold => 4, lockout_duration => '1 hour');
-- Eve: nobody has sent her a code yet.
INSERT INTO hr.employees VALUES ('8801', 'Eve Lind', NULL, 'eve.lind@example.com', 2010.00);
SET ROLE chat_app;

-- Asking again at once: refused, with the time the next code is allowed.
-- The first code is still valid.
SELECT status FROM otp_issue('guarded', 'lim:1', '8801');
SELECT status, ceil(extract(epoch FROM expires_at - clock_timestamp())) AS seconds_to_wait
  FROM otp_issue('guarded', 'lim:1', '8801');
SELECT status, attempts_remaining FROM otp_status('guarded', 'lim:1');

-- After the cooldown (the DBA moves the first code 11 seconds back), a second code.
RESET ROLE;
UPDATE otp.challenge SET created_at = created_at - interval '11 seconds' WHERE conversation = 'lim:1';
SET ROLE chat_app;
SELECT status FROM otp_issue('guarded', 'lim:2', '8801');

-- A third within 15 minutes is one too many, whatever the conversation.
RESET ROLE;
UPDATE otp.challenge SET created_at = created_at - interval '11 seconds' WHERE conversation = 'lim:2';
SET ROLE chat_app;
SELECT status, round(extract(epoch FROM expires_at - clock_timestamp()) / 60) AS minutes_to_wait
  FROM otp_issue('guarded', 'lim:3', '8801');
RESET ROLE;
SELECT count(*) AS codes_for_8801 FROM otp.challenge WHERE agent = 'guarded' AND subject = '8801';

-- Guessing across restarts: the failures add up, and the 4th locks the person out.
SET ROLE otp_sender;
SELECT code AS lim_code FROM otp_outbox_claim(100) WHERE conversation = 'lim:2' \gset
SET ROLE chat_app;
SELECT lpad(((:'lim_code'::int + 1) % 1000000)::text, 6, '0') AS wrong \gset
SELECT status, attempts_remaining FROM otp_verify('guarded', 'lim:2', :'wrong');
SELECT status, attempts_remaining FROM otp_verify('guarded', 'lim:2', :'wrong');
SELECT status, attempts_remaining FROM otp_verify('guarded', 'lim:2', :'wrong');
SELECT status, attempts_remaining FROM otp_verify('guarded', 'lim:1', :'wrong');
-- Locked out: no new code for an hour, even for another conversation.
SELECT status, round(extract(epoch FROM expires_at - clock_timestamp()) / 60) AS minutes_to_wait
  FROM otp_issue('guarded', 'lim:4', '8801');
RESET ROLE;
SELECT subject, consecutive_failures, locked_until > now() AS locked
  FROM otp.subject_guard WHERE agent = 'guarded';
