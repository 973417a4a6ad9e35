-- The do-it-yourself contract: pg_otp's five calls written by hand in
-- PL/pgSQL with pgcrypto, as a careful DBA would write them today, for the
-- comparison in run.sh. It keeps what such a DBA keeps: a keyed hash of the
-- code (HMAC-SHA-256), the code in the outbox encrypted with pgcrypto's
-- symmetric PGP, one live code per conversation, 3 attempts, 5 minutes,
-- sessions with idle and absolute expiry, a hashed session token, SECURITY
-- DEFINER functions with a pinned search_path, NOTIFY for the sender. It
-- leaves out what pg_otp adds: the audit trail, send limits, lockout across
-- codes, the attempt ledger that no rollback reaches, fallback channels,
-- delivery confirmations, constant-time comparison, key rotation.
CREATE SCHEMA IF NOT EXISTS diy;
CREATE EXTENSION IF NOT EXISTS pgcrypto SCHEMA diy;

CREATE TABLE IF NOT EXISTS diy.challenge (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent         text NOT NULL,
    conversation  text NOT NULL,
    subject       text NOT NULL,
    code_hash     bytea NOT NULL,
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'verified', 'locked', 'superseded', 'expired')),
    attempts_used int NOT NULL DEFAULT 0,
    max_attempts  int NOT NULL DEFAULT 3,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS diy_one_pending ON diy.challenge (agent, conversation) WHERE state = 'pending';

CREATE TABLE IF NOT EXISTS diy.outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    challenge_id   bigint NOT NULL,
    conversation   text NOT NULL,
    destination    text NOT NULL,
    code_encrypted bytea,
    state          text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sending', 'sent', 'cancelled')),
    attempt        int NOT NULL DEFAULT 0,
    available_at   timestamptz NOT NULL DEFAULT now(),
    provider_ref   text
);
CREATE INDEX IF NOT EXISTS diy_outbox_due ON diy.outbox (available_at, id) WHERE state IN ('queued', 'sending');
CREATE INDEX IF NOT EXISTS diy_outbox_by_challenge ON diy.outbox (challenge_id);

CREATE TABLE IF NOT EXISTS diy.session (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash      bytea NOT NULL UNIQUE,
    agent           text NOT NULL,
    conversation    text NOT NULL,
    subject         text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    idle_expires_at timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL
);

CREATE OR REPLACE FUNCTION diy.secret() RETURNS text LANGUAGE sql STABLE
    SET search_path = pg_catalog, diy, pg_temp
    AS $$ SELECT current_setting('diy.secret') $$;

CREATE OR REPLACE FUNCTION diy.issue(p_agent text, p_conversation text, p_identifier text)
    RETURNS TABLE (status text, destination_hint text)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, diy, pg_temp AS $$
DECLARE
    v_phone text;
    v_code text;
    v_id bigint;
BEGIN
    SELECT p.phone INTO v_phone FROM public.bench_people p WHERE p.id = p_identifier;
    IF v_phone IS NULL THEN
        RETURN QUERY SELECT 'unknown_identifier'::text, NULL::text;
        RETURN;
    END IF;
    WITH ended AS (
        UPDATE diy.challenge c SET state = 'superseded'
         WHERE c.agent = p_agent AND c.conversation = p_conversation AND c.state = 'pending'
     RETURNING c.id)
    UPDATE diy.outbox o SET state = 'cancelled', code_encrypted = NULL
      FROM ended WHERE o.challenge_id = ended.id AND o.state IN ('queued', 'sending');
    v_code := lpad(((('x' || encode(gen_random_bytes(4), 'hex'))::bit(32)::bigint & 2147483647) % 1000000)::text,
                   6, '0');
    INSERT INTO diy.challenge (agent, conversation, subject, code_hash, expires_at)
    VALUES (p_agent, p_conversation, p_identifier, hmac(v_code, diy.secret(), 'sha256'),
            now() + interval '5 minutes')
    RETURNING id INTO v_id;
    INSERT INTO diy.outbox (challenge_id, conversation, destination, code_encrypted)
    VALUES (v_id, p_conversation, v_phone, pgp_sym_encrypt(v_code, diy.secret()));
    PERFORM pg_notify('diy_outbox', '');
    RETURN QUERY SELECT 'code_sent'::text, '***' || right(v_phone, 2);
END
$$;

CREATE OR REPLACE FUNCTION diy.claim(p_batch int)
    RETURNS TABLE (message_id bigint, attempt int, conversation text, destination text, code text)
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, diy, pg_temp AS $$
    WITH due AS (
        SELECT o.id FROM diy.outbox o
         WHERE o.state IN ('queued', 'sending') AND o.available_at <= now()
         ORDER BY o.available_at, o.id LIMIT p_batch FOR UPDATE SKIP LOCKED)
    UPDATE diy.outbox o SET state = 'sending', attempt = o.attempt + 1, available_at = now() + interval '30 seconds'
      FROM due WHERE o.id = due.id
    RETURNING o.id, o.attempt, o.conversation, o.destination, pgp_sym_decrypt(o.code_encrypted, diy.secret())
$$;

CREATE OR REPLACE FUNCTION diy.sent(p_message_id bigint, p_attempt int, p_provider_ref text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, diy, pg_temp AS $$
BEGIN
    UPDATE diy.outbox SET state = 'sent', code_encrypted = NULL, provider_ref = p_provider_ref
     WHERE id = p_message_id AND attempt = p_attempt AND state = 'sending';
    RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION diy.verify(p_agent text, p_conversation text, p_code text)
    RETURNS TABLE (status text, attempts_remaining int, session_token text)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, diy, pg_temp AS $$
DECLARE
    c diy.challenge;
    v_token text;
BEGIN
    SELECT * INTO c FROM diy.challenge
     WHERE agent = p_agent AND conversation = p_conversation AND state = 'pending' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_challenge'::text, NULL::int, NULL::text;
    ELSIF c.expires_at <= now() THEN
        UPDATE diy.challenge SET state = 'expired' WHERE id = c.id;
        RETURN QUERY SELECT 'expired'::text, NULL::int, NULL::text;
    ELSIF hmac(p_code, diy.secret(), 'sha256') = c.code_hash THEN
        UPDATE diy.challenge SET state = 'verified' WHERE id = c.id;
        v_token := encode(gen_random_bytes(32), 'hex');
        INSERT INTO diy.session (token_hash, agent, conversation, subject, idle_expires_at, expires_at)
        VALUES (digest(v_token, 'sha256'), c.agent, c.conversation, c.subject,
                now() + interval '30 minutes', now() + interval '24 hours');
        RETURN QUERY SELECT 'verified'::text, NULL::int, v_token;
    ELSE
        UPDATE diy.challenge SET attempts_used = attempts_used + 1,
               state = CASE WHEN attempts_used + 1 >= max_attempts THEN 'locked' ELSE state END
         WHERE id = c.id;
        RETURN QUERY SELECT CASE WHEN c.attempts_used + 1 >= c.max_attempts THEN 'locked' ELSE 'incorrect' END,
                            c.max_attempts - c.attempts_used - 1, NULL::text;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION diy.touch(p_token text) RETURNS TABLE (status text, subject text)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, diy, pg_temp AS $$
DECLARE
    v_subject text;
BEGIN
    UPDATE diy.session s SET last_seen_at = now(), idle_expires_at = least(now() + interval '30 minutes', s.expires_at)
     WHERE s.token_hash = digest(p_token, 'sha256') AND s.idle_expires_at > now() AND s.expires_at > now()
    RETURNING s.subject INTO v_subject;
    IF v_subject IS NULL THEN
        RETURN QUERY SELECT 'expired'::text, NULL::text;
    ELSE
        RETURN QUERY SELECT 'active'::text, v_subject;
    END IF;
END
$$;
