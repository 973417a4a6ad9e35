-- Benchmark fixture: 10,000 people, an agent with limits out of the way (so
-- the benchmark measures the work, not the refusals), and the plain-SQL
-- baseline's tables, shaped like pg_otp's, with the same indexes.
CREATE EXTENSION IF NOT EXISTS pg_otp;
CREATE TABLE IF NOT EXISTS bench_people (id text PRIMARY KEY, phone text, email text);
INSERT INTO bench_people SELECT 'p' || n, '+34 600 ' || lpad(n::text, 6, '0'), NULL
  FROM generate_series(1, 10000) n ON CONFLICT DO NOTHING;
SELECT otp_configure(agent => 'bench', source => 'bench_people', id_column => 'id', phone_column => 'phone',
                     max_codes => 1000000, resend_cooldown => '0', lockout_threshold => 100);

CREATE TABLE IF NOT EXISTS plain_challenge (
    id bigserial PRIMARY KEY, agent text NOT NULL, conversation text NOT NULL, subject text NOT NULL,
    code text NOT NULL, state text NOT NULL DEFAULT 'pending', attempts int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(), expires_at timestamptz NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS plain_one_pending ON plain_challenge (agent, conversation) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS plain_outbox (
    id bigserial PRIMARY KEY, challenge_id bigint NOT NULL, conversation text NOT NULL, destination text NOT NULL,
    code text, state text NOT NULL DEFAULT 'queued', available_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS plain_outbox_due ON plain_outbox (available_at) WHERE state IN ('queued', 'sending');
CREATE TABLE IF NOT EXISTS plain_session (
    id bigserial PRIMARY KEY, token text UNIQUE NOT NULL, subject text NOT NULL, challenge_id bigint,
    last_seen_at timestamptz NOT NULL DEFAULT now(), expires_at timestamptz NOT NULL);

-- The baseline's tables (plain.sql): pg_otp's own shapes, copied with their
-- constraints, defaults, identities and indexes, so both do the same writes.
CREATE SCHEMA IF NOT EXISTS plain;
CREATE TABLE IF NOT EXISTS plain.agent (LIKE otp.agent INCLUDING ALL);
INSERT INTO plain.agent SELECT * FROM otp.agent WHERE name = 'bench' ON CONFLICT DO NOTHING;
CREATE SEQUENCE IF NOT EXISTS plain.challenge_id_seq AS bigint;
CREATE TABLE IF NOT EXISTS plain.challenge (LIKE otp.challenge INCLUDING ALL);
CREATE TABLE IF NOT EXISTS plain.subject_guard (LIKE otp.subject_guard INCLUDING ALL);
CREATE TABLE IF NOT EXISTS plain.outbox (LIKE otp.outbox INCLUDING ALL);
CREATE TABLE IF NOT EXISTS plain.session (LIKE otp.session INCLUDING ALL);
CREATE TABLE IF NOT EXISTS plain.event (LIKE otp.event INCLUDING ALL);
