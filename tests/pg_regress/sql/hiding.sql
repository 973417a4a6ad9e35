-- Anti-enumeration. With reveal_unknown => false, an employee number that
-- does not exist gets the same answer as one that does, and nothing is sent.
SELECT otp_configure(agent => 'discreet', source => 'hr.employees', id_column => 'employee_no',
                     phone_column => 'whatsapp', email_column => 'email',
                     reveal_unknown => false, resend_cooldown => '0');
SET ROLE chat_app;
SELECT status, channel, length(destination_hint) AS hint_length,
       round(extract(epoch FROM expires_at - clock_timestamp()) / 60) AS minutes
  FROM otp_issue('discreet', 'hide:real', '4721');
SELECT status, channel, length(destination_hint) AS hint_length,
       round(extract(epoch FROM expires_at - clock_timestamp()) / 60) AS minutes
  FROM otp_issue('discreet', 'hide:nobody', '0000');
-- The same unknown number always shows the same hint.
SELECT (SELECT destination_hint FROM otp_issue('discreet', 'hide:again', '0000'))
     = (SELECT destination_hint FROM otp_status('discreet', 'hide:nobody')) AS same_hint;
-- Guessing at it looks like guessing at a real code.
SELECT status, attempts_remaining FROM otp_verify('discreet', 'hide:nobody', '123456');
SELECT status, delivery, attempts_remaining FROM otp_status('discreet', 'hide:nobody');
RESET ROLE;
-- Only the real one was queued for delivery. The unknown number's messages
-- were born cancelled, without a code: the same work, nothing to send.
SELECT conversation, state, code_sealed IS NOT NULL AS has_code
  FROM otp.outbox WHERE agent = 'discreet' ORDER BY id;
