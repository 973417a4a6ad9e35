-- The baseline: what pg_otp does, written by hand in plain SQL against
-- tables shaped exactly like pg_otp's (schema "plain", made in setup.sql with
-- the same columns, constraints and indexes): the same row writes and
-- lookups, statement for statement, with the same commits. What it leaves
-- out is what pg_otp adds: crypto (the code is kept as it is), the function
-- calls and SPI, and argument checking. Every step yields exactly one row.
\set person random(1, 10000)
\set conversation random(1, 1000000000)
\set code random(0, 999999)
-- otp_issue
BEGIN;
SELECT code_ttl, max_attempts, idle_timeout, absolute_timeout, max_codes, code_window, resend_cooldown
  FROM plain.agent WHERE name = 'bench';
SELECT pg_advisory_xact_lock(hashtext('plain/bench'), hashtext('b-' || :conversation::text));
SELECT id::text, phone::text FROM bench_people WHERE id::text = 'p' || :person::text LIMIT 2;
SELECT pg_advisory_xact_lock(hashtext('plain/subject/bench'), hashtext('p' || :person::text)),
       pg_advisory_xact_lock(hashtext('plain/destination'), :person::int);
WITH subject_codes AS (
    SELECT created_at FROM plain.challenge
     WHERE agent = 'bench' AND subject = 'p' || :person::text AND created_at > now() - interval '15 minutes'),
destination_codes AS (
    SELECT created_at FROM plain.challenge
     WHERE destination_key = decode(lpad(:person::text, 64, '0'), 'hex') AND created_at > now() - interval '15 minutes')
SELECT GREATEST(
    (SELECT locked_until FROM plain.subject_guard WHERE agent = 'bench' AND subject = 'p' || :person::text AND locked_until > now()),
    (SELECT created_at + interval '15 minutes' FROM subject_codes ORDER BY created_at DESC OFFSET 1000000 - 1 LIMIT 1),
    (SELECT created_at + interval '15 minutes' FROM destination_codes ORDER BY created_at DESC OFFSET 1000000 - 1 LIMIT 1),
    (SELECT max(created_at) FROM (SELECT created_at FROM subject_codes UNION ALL SELECT created_at FROM destination_codes) recent
      HAVING max(created_at) > now()));
WITH ended AS (
    UPDATE plain.challenge SET state = 'superseded', ended_at = now(),
           delivery = CASE WHEN delivery = 'queued' THEN 'cancelled' ELSE delivery END
     WHERE agent = 'bench' AND conversation = 'b-' || :conversation::text AND state = 'pending'
 RETURNING id, agent, conversation, subject, channel, destination_hint),
stopped AS (
    UPDATE plain.outbox o SET state = 'cancelled', code_nonce = NULL, code_sealed = NULL, finished_at = now()
      FROM ended WHERE o.challenge_id = ended.id AND o.finished_at IS NULL)
INSERT INTO plain.event (at, agent, conversation, subject, event, channel, destination_hint)
SELECT now(), agent, conversation, subject, 'superseded', channel, destination_hint FROM ended;
SELECT nextval('plain.challenge_id_seq') AS challenge_id \gset
WITH issued AS (
    INSERT INTO plain.challenge (id, agent, conversation, subject, channel, destination_hint, destination_key,
                                 code_hash, max_attempts, created_at, expires_at, decoy, key_id, delivery)
    VALUES (:challenge_id::bigint, 'bench', 'b-' || :conversation::text, 'p' || :person::text, 'whatsapp', '***' || right(:person::text, 2),
            decode(lpad(:person::text, 64, '0'), 'hex'), decode(lpad(:code::text, 64, '0'), 'hex'), 3,
            now(), now() + interval '5 minutes', false, '\x0000000000000000', 'queued')
 RETURNING agent, conversation, subject, channel, destination_hint)
INSERT INTO plain.event (at, agent, conversation, subject, event, channel, destination_hint)
SELECT now(), agent, conversation, subject, 'issued', channel, destination_hint FROM issued;
INSERT INTO plain.outbox (challenge_id, agent, conversation, channel, destination, code_nonce, code_sealed,
                          available_at, expires_at, created_at, key_id)
SELECT :challenge_id::bigint, 'bench', 'b-' || :conversation::text, 'whatsapp', p.phone, '\x00',
       convert_to(lpad(:code::text, 6, '0'), 'UTF8'), now(), now() + interval '5 minutes', now(), '\x0000000000000000'
  FROM bench_people p, pg_notify('plain_outbox', '') AS wake WHERE p.id = 'p' || :person::text;
COMMIT;
-- otp_outbox_claim(1): a dispatcher's claim
WITH due AS (
    SELECT id FROM plain.outbox WHERE state IN ('queued', 'sending') AND available_at <= now()
     ORDER BY available_at, id LIMIT 1 FOR UPDATE SKIP LOCKED),
judged AS (
    SELECT o.id, CASE WHEN o.expires_at <= now() THEN 'expired'
                      WHEN (SELECT c.state FROM plain.challenge c WHERE c.id = o.challenge_id) IS DISTINCT FROM 'pending'
                      THEN 'cancelled' ELSE 'sending' END AS next_state
      FROM plain.outbox o JOIN due USING (id)),
claimed AS (
    UPDATE plain.outbox o
       SET state = judged.next_state, attempt = o.attempt + 1, available_at = now() + interval '30 seconds'
      FROM judged WHERE o.id = judged.id
 RETURNING o.id, o.conversation, o.code_sealed, o.state)
SELECT coalesce(max(id), 0) AS message_id, coalesce(max(conversation), 'none') AS claimed,
       coalesce(max(convert_from(code_sealed, 'UTF8')), '000000') AS claimed_code
  FROM claimed WHERE state = 'sending' \gset
-- otp_outbox_sent: the dispatcher's report
BEGIN;
SELECT challenge_id, state FROM plain.outbox WHERE id = :message_id::bigint FOR UPDATE;
UPDATE plain.outbox SET state = 'sent', code_nonce = NULL, code_sealed = NULL, finished_at = now(), sent_at = now(),
       provider_ref = 'bench'
 WHERE id = :message_id::bigint AND state = 'sending';
UPDATE plain.challenge SET delivery = 'sent' WHERE id = (SELECT challenge_id FROM plain.outbox WHERE id = :message_id::bigint);
INSERT INTO plain.event (at, agent, conversation, subject, event, channel, destination_hint)
SELECT now(), agent, conversation, subject, 'delivered', channel, destination_hint
  FROM plain.challenge WHERE id = (SELECT challenge_id FROM plain.outbox WHERE id = :message_id::bigint);
COMMIT;
-- otp_verify
BEGIN;
SELECT code_ttl, max_attempts, idle_timeout, absolute_timeout FROM plain.agent WHERE name = 'bench';
WITH pending AS (
    SELECT id, subject, code_hash FROM plain.challenge
     WHERE agent = 'bench' AND conversation = :claimed::text AND state = 'pending' FOR UPDATE)
SELECT coalesce(max(id), 0) AS verify_id, coalesce(max(subject), '') AS verify_subject FROM pending \gset
INSERT INTO plain.subject_guard AS g (agent, subject) SELECT 'bench', :verify_subject::text WHERE :verify_id::bigint > 0
    ON CONFLICT (agent, subject) DO UPDATE SET consecutive_failures = g.consecutive_failures
 RETURNING locked_until, consecutive_failures;
WITH ended AS (
    UPDATE plain.challenge SET state = 'verified', ended_at = now()
     WHERE id = :verify_id::bigint AND state = 'pending' AND code_hash = decode(lpad(:claimed_code, 64, '0'), 'hex')
 RETURNING id, agent, conversation, subject, channel, destination_hint),
stopped AS (
    UPDATE plain.outbox o SET state = 'cancelled', code_nonce = NULL, code_sealed = NULL, finished_at = now()
      FROM ended WHERE o.challenge_id = ended.id AND o.finished_at IS NULL AND o.state = 'queued')
INSERT INTO plain.event (at, agent, conversation, subject, event, channel, destination_hint)
SELECT now(), agent, conversation, subject, 'verified', channel, destination_hint FROM ended;
WITH started AS (
    INSERT INTO plain.session (token_hash, agent, conversation, subject, challenge_id, idle_timeout,
                               created_at, last_seen_at, idle_expires_at, expires_at)
    SELECT decode(md5(random()::text) || md5(random()::text), 'hex'), agent, conversation, subject, id,
           interval '30 minutes', now(), now(), now() + interval '30 minutes', now() + interval '24 hours'
      FROM plain.challenge WHERE id = :verify_id::bigint AND state = 'verified'
 RETURNING token_hash, agent, conversation, subject),
recorded AS (
    INSERT INTO plain.event (at, agent, conversation, subject, event)
    SELECT now(), agent, conversation, subject, 'session_started' FROM started)
SELECT coalesce(max(encode(token_hash, 'hex')), '') AS token FROM started \gset
COMMIT;
-- session_touch
UPDATE plain.session SET last_seen_at = now(), idle_expires_at = LEAST(now() + idle_timeout, expires_at)
 WHERE token_hash = decode(:token, 'hex') AND revoked_at IS NULL AND now() < expires_at AND now() < idle_expires_at
RETURNING agent, conversation, subject, idle_expires_at, expires_at;
