-- One full authentication through the do-it-yourself PL/pgSQL contract
-- (diy_setup.sql), the same five calls and commits as pg_otp.sql.
\set person random(1, 10000)
\set conversation random(1, 1000000000)
SELECT status FROM diy.issue('bench', 'b-' || :conversation, 'p' || :person);
SELECT coalesce(max(message_id), 0) AS message_id, coalesce(max(attempt), 0) AS attempt,
       coalesce(max(conversation), 'none') AS claimed, coalesce(max(code), '000000') AS code
  FROM diy.claim(1) \gset
SELECT diy.sent(:message_id, :attempt, 'bench') FROM (SELECT 1) once WHERE :message_id > 0;
SELECT coalesce(session_token, '') AS session_token FROM diy.verify('bench', :claimed, :code) \gset
SELECT status FROM diy.touch(:session_token);
