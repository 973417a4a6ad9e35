-- Anti-enumeration. With reveal_unknown => false, an employee number that
-- does not exist gets the same answer as one that does, and nothing is sent.
SELECT otp_configure(agent => 'discreet', source => 'hr.employees', id_column => 'employee_no',
                     phone_column => 'whatsapp', email_column => 'email',
                     reveal_unknown => false, resend_cooldown => '0');
SET ROLE chat_app;
SELECT status, channel, length(destination_hint) AS hint_length,
       round(extract(epoch FROM expires_at - clock_timestamp()) / 60) AS minutes
  FROM otp_issue('discreet', 'hide:real', '4721');
-- The unknown number's hint is shaped like a real person's: the channel (and
-- email domain) of one of the people sampled from hr.employees when the agent
-- was configured, picked by a keyed hash of the number.
SELECT status,
       CASE channel WHEN 'whatsapp' THEN destination_hint ~ '^\*\*\*[0-9]{2}$'
                    WHEN 'email' THEN destination_hint ~ '^[a-z]\*\*\*@example\.com$' END AS real_shape,
       round(extract(epoch FROM expires_at - clock_timestamp()) / 60) AS minutes
  FROM otp_issue('discreet', 'hide:nobody', '0000');
-- The same unknown number always shows the same hint.
SELECT (SELECT destination_hint FROM otp_issue('discreet', 'hide:again', '0000'))
     = (SELECT destination_hint FROM otp_status('discreet', 'hide:nobody')) AS same_hint;
-- Guessing at it looks like guessing at a real code.
SELECT status, attempts_remaining FROM otp_verify('discreet', 'hide:nobody', '123456');
SELECT status, delivery, attempts_remaining FROM otp_status('discreet', 'hide:nobody');
RESET ROLE;
-- Every code was queued, with the same work; the unknown number's messages
-- have no destination, and a dispatcher only ever gets the real one. The
-- others are "sent" by the claim itself after a simulated send, so that
-- otp_status shows them the way it shows a real delivery.
SELECT conversation, state, code_sealed IS NOT NULL AS has_code, destination = '' AS decoy
  FROM otp.outbox WHERE agent = 'discreet' ORDER BY id;
SET ROLE otp_sender;
SELECT conversation FROM otp_outbox_claim(batch_size => 1000) WHERE conversation LIKE 'hide:%';
RESET ROLE;
