-- Purge: rows that ended long ago go; what is recent or still counted stays.
-- Move the example conversation's rows 8 days into the past.
UPDATE otp.challenge SET created_at = created_at - interval '8 days', expires_at = expires_at - interval '8 days',
                         ended_at = ended_at - interval '8 days'
 WHERE conversation = 'wa:34600123478';
UPDATE otp.outbox SET finished_at = finished_at - interval '8 days' WHERE conversation = 'wa:34600123478';
UPDATE otp.session SET expires_at = expires_at - interval '8 days', idle_expires_at = idle_expires_at - interval '8 days',
                       revoked_at = revoked_at - interval '8 days'
 WHERE conversation = 'wa:34600123478';
SELECT challenges >= 1 AS challenges_gone, messages >= 1 AS messages_gone, sessions = 1 AS session_gone
  FROM otp_purge();
SELECT count(*) AS left_of_example FROM otp.challenge WHERE conversation = 'wa:34600123478';
SELECT count(*) > 0 AS recent_codes_kept FROM otp.challenge;
-- Audit events stay for their own, longer retention.
SELECT count(*) > 0 AS events_kept FROM otp.event WHERE conversation = 'wa:34600123478';
-- Applications cannot purge.
SET ROLE chat_app;
SELECT * FROM otp_purge();
RESET ROLE;
