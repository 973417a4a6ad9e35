-- One full authentication through pg_otp. Under concurrency a claim may get
-- another client's message, or none; every step yields exactly one row.
\set person random(1, 10000)
\set conversation random(1, 1000000000)
SELECT status FROM otp_issue('bench', 'b-' || :conversation, 'p' || :person);
SELECT coalesce(max(conversation), 'none') AS claimed, coalesce(max(code), '000000') AS code
  FROM otp_outbox_claim(1) \gset
SELECT coalesce(session_token, '') AS session_token FROM otp_verify('bench', :claimed, :code) \gset
SELECT status FROM session_touch(:session_token);
