-- The plain-SQL baseline with fewer writes than pg_otp: no audit trail, no
-- send limits, no lockout. For comparison only; plain.sql is the baseline
-- of the target. Every step yields exactly one row.
\set person random(1, 10000)
\set conversation random(1, 1000000000)
BEGIN;
SELECT phone FROM bench_people WHERE id = 'p' || :person;
UPDATE plain_challenge SET state = 'superseded'
 WHERE agent = 'bench' AND conversation = 'b-' || :conversation AND state = 'pending';
WITH c AS (INSERT INTO plain_challenge (agent, conversation, subject, code, expires_at)
                VALUES ('bench', 'b-' || :conversation, 'p' || :person,
                        lpad((random() * 999999)::int::text, 6, '0'), now() + interval '5 minutes')
             RETURNING id, conversation, code)
INSERT INTO plain_outbox (challenge_id, conversation, destination, code)
     SELECT c.id, c.conversation, p.phone, c.code FROM c, bench_people p WHERE p.id = 'p' || :person;
COMMIT;
WITH due AS (SELECT id FROM plain_outbox WHERE state IN ('queued', 'sending') AND available_at <= now()
              ORDER BY available_at LIMIT 1 FOR UPDATE SKIP LOCKED),
     claimed AS (UPDATE plain_outbox o SET state = 'sent', code = NULL FROM due WHERE o.id = due.id
                  RETURNING o.challenge_id)
SELECT coalesce(max(challenge_id), 0) AS claimed_id FROM claimed \gset
BEGIN;
SELECT id FROM plain_challenge WHERE id = :claimed_id AND state = 'pending' FOR UPDATE;
UPDATE plain_challenge SET state = 'verified' WHERE id = :claimed_id AND state = 'pending';
WITH s AS (INSERT INTO plain_session (token, subject, challenge_id, expires_at)
                SELECT md5(random()::text), subject, id, now() + interval '24 hours'
                  FROM plain_challenge WHERE id = :claimed_id
             RETURNING token)
SELECT coalesce(max(token), '') AS plain_token FROM s \gset
COMMIT;
UPDATE plain_session SET last_seen_at = now() WHERE token = :plain_token AND expires_at > now();
