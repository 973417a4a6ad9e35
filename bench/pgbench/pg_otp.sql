-- One full authentication through pg_otp: the code is issued, a dispatcher
-- claims and reports its message, the user's code is verified, the session
-- is touched. Under concurrency a claim may get another client's message,
-- or none; every step yields exactly one row.
\set person random(1, 10000)
\set conversation random(1, 1000000000)
SELECT status FROM otp_issue('bench', 'b-' || :conversation, 'p' || :person);
SELECT coalesce(max(message_id), 0) AS message_id, coalesce(max(attempt), 0) AS attempt,
       coalesce(max(conversation), 'none') AS claimed, coalesce(max(code), '000000') AS code
  FROM otp_outbox_claim(1) \gset
SELECT otp_outbox_sent(:message_id, :attempt, 'bench') FROM (SELECT 1) once WHERE :message_id > 0;
SELECT coalesce(session_token, '') AS session_token FROM otp_verify('bench', :claimed, :code) \gset
SELECT status FROM session_touch(:session_token);
