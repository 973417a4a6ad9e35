-- pg_otp storage. Everything lives in schema "otp", which no application role
-- can enter: callers reach it only through the SECURITY DEFINER functions.
-- Invariants that must hold whatever the code does are domains, CHECK
-- constraints and indexes here, so a bug in the Rust layer fails loudly
-- instead of corrupting.

CREATE SCHEMA otp;
REVOKE ALL ON SCHEMA otp FROM PUBLIC;
COMMENT ON SCHEMA otp IS 'pg_otp internal state; use the otp_* and session_* functions instead';

-- The vocabularies (each also spelled once in Rust: the pg_test
-- the_schema_allows_exactly_the_words_of_the_types keeps the two equal) and
-- the fixed-length values, as domains. A domain's CHECK is parsed once per
-- backend and kept in the type cache; a table's CHECK is read back from the
-- catalog and planned again at every INSERT and UPDATE, which on the tables
-- written at every step of an authentication cost more than the rows.
CREATE DOMAIN otp.channel AS text
    CONSTRAINT channel_words CHECK (VALUE IN ('whatsapp', 'email'));
CREATE DOMAIN otp.challenge_state AS text
    CONSTRAINT challenge_state_words
    CHECK (VALUE IN ('pending', 'verified', 'locked', 'superseded', 'expired', 'record_changed'));
-- otp.challenge.delivery: otp.outbox's states as a challenge shows them (a
-- message being sent still shows as queued)
CREATE DOMAIN otp.delivery_state AS text
    CONSTRAINT delivery_state_words
    CHECK (VALUE IN ('queued', 'sent', 'delivered', 'read', 'failed', 'expired', 'cancelled'));
CREATE DOMAIN otp.message_state AS text
    CONSTRAINT message_state_words
    CHECK (VALUE IN ('queued', 'sending', 'sent', 'delivered', 'read', 'failed', 'expired', 'cancelled'));
CREATE DOMAIN otp.event_word AS text
    CONSTRAINT event_words CHECK (VALUE IN (
        'issued', 'delivered', 'delivery_failed', 'verified', 'incorrect', 'locked',
        'expired', 'superseded', 'rate_limited', 'session_started', 'session_expired',
        'session_revoked', 'record_changed', 'received', 'read'));
-- a keyed hash (HMAC-SHA-256) or a SHA-256 digest
CREATE DOMAIN otp.digest AS bytea CONSTRAINT digest_length CHECK (length(VALUE) = 32);
-- names the otp.secret_key a hash or sealed code was made with (crypto::Keys::id)
CREATE DOMAIN otp.key_id AS bytea CONSTRAINT key_id_length CHECK (length(VALUE) = 8);
-- a well-formed BCP 47 tag
CREATE DOMAIN otp.language_tag AS text
    CONSTRAINT language_tag_form CHECK (length(VALUE) <= 35 AND VALUE ~ '^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$');
-- shaped like an IANA time zone name (record.rs keeps only zones PostgreSQL knows)
CREATE DOMAIN otp.time_zone_name AS text
    CONSTRAINT time_zone_name_form
    CHECK (length(VALUE) <= 64 AND VALUE ~ '^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$');
REVOKE USAGE ON DOMAIN otp.channel, otp.challenge_state, otp.delivery_state, otp.message_state, otp.event_word,
    otp.digest, otp.key_id, otp.language_tag, otp.time_zone_name FROM PUBLIC;

-- "Authenticate conversation" settings, one row per agent (otp_configure).
CREATE TABLE otp.agent (
    name              text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 128),
    -- regclass survives renames of the table; a dropped table is detected at use
    source            regclass NOT NULL,
    id_column         text NOT NULL,
    phone_column      text,
    email_column      text,
    require_otp       boolean NOT NULL,
    code_ttl          interval NOT NULL CHECK (code_ttl > interval '0'),
    max_attempts      integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 10),
    idle_timeout      interval NOT NULL CHECK (idle_timeout > interval '0'),
    absolute_timeout  interval NOT NULL CHECK (absolute_timeout > interval '0'),
    preferred_channel otp.channel NOT NULL,
    -- abuse resistance (see src/limits.rs)
    max_codes         integer NOT NULL CHECK (max_codes BETWEEN 1 AND 1000000),
    code_window       interval NOT NULL CHECK (code_window > interval '0'),
    resend_cooldown   interval NOT NULL CHECK (resend_cooldown >= interval '0'),
    lockout_threshold integer NOT NULL CHECK (lockout_threshold BETWEEN 1 AND 100),
    lockout_duration  interval NOT NULL CHECK (lockout_duration > interval '0'),
    -- false: unknown identifiers get a decoy challenge instead of not_found
    reveal_unknown    boolean NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    -- the role that may act for this agent (its members); NULL: any member
    -- of otp_app (see src/config.rs, may_act_for)
    app_role          regrole,
    -- reveal_unknown = false: what decoys look like, one entry per record of
    -- a sample of the source taken at otp_configure ('whatsapp' or
    -- 'email:<domain>'; see src/record.rs, decoy_shapes)
    decoy_shapes      text[],
    -- the column of the source holding the person's language (a BCP 47 tag
    -- such as 'es-MX'), passed to the dispatcher with each message
    language_column   text,
    -- ... and their time zone (an IANA name such as 'America/Mexico_City')
    time_zone_column  text,
    CHECK (phone_column IS NOT NULL OR email_column IS NOT NULL),
    CHECK (idle_timeout <= absolute_timeout)
);
-- Agent settings are configuration: pg_dump must keep them.
SELECT pg_catalog.pg_extension_config_dump('otp.agent', '');

-- One row per code issued. Only an HMAC of the code is kept.
CREATE SEQUENCE otp.challenge_id_seq AS bigint;
CREATE TABLE otp.challenge (
    -- taken with nextval() before insert: the code hash is bound to this id
    id               bigint PRIMARY KEY,
    agent            text NOT NULL,
    conversation     text NOT NULL,
    subject          text NOT NULL,
    channel          otp.channel NOT NULL,
    destination_hint text NOT NULL,
    -- keyed hash of channel and address (of the fallback once the code went
    -- there): per-destination send limits, and the check that the address is
    -- still on the record, without a second copy of the address
    destination_key  otp.digest NOT NULL,
    code_hash        otp.digest NOT NULL,
    -- which otp.secret_key the hash was made with
    key_id           otp.key_id NOT NULL,
    state            otp.challenge_state NOT NULL DEFAULT 'pending',
    attempts_used    integer NOT NULL DEFAULT 0 CHECK (attempts_used BETWEEN 0 AND max_attempts),
    max_attempts     integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 10),
    -- what became of the message carrying the code: written only by the
    -- delivery module (src/delivery), mirroring otp.outbox, where a message
    -- being sent still shows as queued
    delivery         otp.delivery_state NOT NULL DEFAULT 'queued',
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    ended_at         timestamptz,
    -- stands in for an unknown identifier (reveal_unknown = false): its code
    -- was never sent to anyone, so it can never verify
    decoy            boolean NOT NULL DEFAULT false,
    CONSTRAINT challenge_ended_iff_final CHECK ((state = 'pending') = (ended_at IS NULL))
);
ALTER SEQUENCE otp.challenge_id_seq OWNED BY otp.challenge.id;
-- At most one live code per conversation, whatever races happen above.
CREATE UNIQUE INDEX challenge_one_pending ON otp.challenge (agent, conversation)
    WHERE state = 'pending';
-- otp_status: the latest challenge of a conversation.
CREATE INDEX challenge_by_conversation ON otp.challenge (agent, conversation, id);
-- send limits: recent codes per person and per destination
CREATE INDEX challenge_by_subject ON otp.challenge (agent, subject, created_at);
CREATE INDEX challenge_by_destination ON otp.challenge (destination_key, created_at);

-- Failed verifications in a row per person, across challenges, and the
-- lockout they lead to. Restarting the flow does not reset it; a success does.
CREATE TABLE otp.subject_guard (
    agent                text NOT NULL,
    subject              text NOT NULL,
    consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    locked_until         timestamptz,
    PRIMARY KEY (agent, subject)
);

-- Messages for the delivery process, written only by the delivery module
-- (src/delivery), whose MessageState spells the state words. The code is
-- kept only sealed (AEAD under a key derived from otp.secret_key) and only
-- while the message is in flight.
CREATE TABLE otp.outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    challenge_id bigint NOT NULL,
    agent        text NOT NULL,
    conversation text NOT NULL,
    channel      otp.channel NOT NULL,
    -- '' for a decoy's message (reveal_unknown = false): queued and "sent"
    -- like any other, but never handed to a dispatcher
    destination  text NOT NULL,
    -- the record's other channel: used when this one fails permanently
    fallback_channel     otp.channel,
    fallback_destination text,
    code_nonce   bytea,
    code_sealed  bytea,
    -- which otp.secret_key sealed the code
    key_id       otp.key_id NOT NULL,
    state        otp.message_state NOT NULL DEFAULT 'queued',
    attempt      integer NOT NULL DEFAULT 0,
    -- when the message may next be claimed: creation, lease end, or retry time
    available_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    provider_ref text,
    last_error   text,
    created_at   timestamptz NOT NULL,
    sent_at      timestamptz,
    finished_at  timestamptz,
    -- the person's language, from the agent's language_column, or NULL (the
    -- dispatcher then uses the agent's language)
    language     otp.language_tag,
    -- the person's time zone, from the agent's time_zone_column: a zone
    -- PostgreSQL knows, or NULL (the dispatcher then uses the agent's)
    time_zone    otp.time_zone_name,
    -- a message holds its code while it waits or is sent, and after that only
    -- while `sent` (until its provider confirms delivery, the code expires or
    -- the challenge ends: a late failure may still fall back); never later
    CONSTRAINT outbox_code_only_while_open
        CHECK ((code_sealed IS NULL) = (code_nonce IS NULL)
               AND (state NOT IN ('queued', 'sending') OR code_sealed IS NOT NULL)
               AND (state IN ('queued', 'sending', 'sent') OR code_sealed IS NULL)),
    -- finished_at is set exactly when the message reaches a final state
    CONSTRAINT outbox_finished_iff_final CHECK ((state IN ('queued', 'sending')) = (finished_at IS NULL)),
    CONSTRAINT outbox_fallback_complete CHECK ((fallback_channel IS NULL) = (fallback_destination IS NULL)),
    CONSTRAINT outbox_fallback_differs CHECK (fallback_channel IS DISTINCT FROM channel)
);
-- The claim's scan, in the order it takes messages (so LIMIT stops it early);
-- decoys have their own, so that no number of them delays a real message.
CREATE INDEX outbox_due ON otp.outbox (available_at, id)
    WHERE state IN ('queued', 'sending') AND destination <> '';
CREATE INDEX outbox_decoys_due ON otp.outbox (available_at, id)
    WHERE state IN ('queued', 'sending') AND destination = '';
CREATE INDEX outbox_by_challenge ON otp.outbox (challenge_id);
-- A provider's status webhook names the message by the provider's id for it.
CREATE INDEX outbox_by_provider_ref ON otp.outbox (provider_ref) WHERE provider_ref IS NOT NULL;
-- The sweep erases the codes kept for a late fallback once they expire.
CREATE INDEX outbox_held_codes ON otp.outbox (expires_at) WHERE state = 'sent' AND code_sealed IS NOT NULL;

-- Authenticated conversation sessions. The bearer token is kept only as SHA-256.
CREATE TABLE otp.session (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash      otp.digest NOT NULL UNIQUE,
    agent           text NOT NULL,
    conversation    text NOT NULL,
    subject         text NOT NULL,
    -- the verified challenge; NULL when the agent does not require a code
    challenge_id    bigint UNIQUE,
    idle_timeout    interval NOT NULL,
    created_at      timestamptz NOT NULL,
    last_seen_at    timestamptz NOT NULL,
    idle_expires_at timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    -- when a touch first found the session timed out (for the audit trail)
    ended_at        timestamptz,
    -- a session started by a code is tied to the address the code went to:
    -- its channel and keyed fingerprint, made under the secret key_id names
    channel         otp.channel,
    destination_key otp.digest,
    key_id          otp.key_id,
    -- when a touch found the person gone from the source or that address
    -- gone from their record: the session is over for good
    record_changed_at timestamptz,
    CHECK (idle_expires_at <= expires_at),
    CHECK ((channel IS NULL) = (destination_key IS NULL) AND (channel IS NULL) = (key_id IS NULL))
);
-- otp_sessions and session_revoke_all: a person's sessions.
CREATE INDEX session_by_subject ON otp.session (agent, subject);

-- Audit trail: what happened, to whom, when, through which channel. Never a
-- code. Append-only: rows are never updated, only purged when old.
--
-- Partitioned by time into 53 weekly partitions used in turn, event_00 to
-- event_52: a row's slot is its week since 1970, modulo 53 (otp.event_slot),
-- so a week's partition is used again a year later. The purge empties a
-- partition whose every row is older than the retention with one TRUNCATE,
-- which locks that partition alone, instead of deleting its rows one by one
-- and leaving them to vacuum. A fixed ring rather than a partition per month
-- created as time passes: nothing is created at run time, so there is no DDL
-- on the flow's path, and every partition is part of the extension (owner,
-- privileges, pg_dump, upgrades).
-- Weeks before 1970 count down from 52; 'infinity' and '-infinity' are
-- slot 0: their epoch is infinite, mod() of it is NaN, and NaN sorts above
-- every number, so LEAST makes it 106, which is slot 0. `at` appears once
-- so that the planner inlines the function into the column default below,
-- whose argument, clock_timestamp(), is volatile: called instead, a SQL
-- function is parsed and planned again in every statement that inserts an
-- event. (Every name in the body is pg_catalog's: the body is resolved
-- once, here, where an operator planted in the target schema could match
-- closer.)
CREATE FUNCTION otp.event_slot(at timestamptz) RETURNS smallint
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN CAST(pg_catalog.mod(LEAST(pg_catalog.mod(pg_catalog.floor(EXTRACT(epoch FROM at) OPERATOR(pg_catalog./) 604800),
                                                    53)
                                     OPERATOR(pg_catalog.+) 53,
                                     106),
                               53)
                AS pg_catalog.int2);
CREATE TABLE otp.event (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    at               timestamptz NOT NULL,
    -- the partition: the week the row is written in, which is the week of
    -- `at` or, when a week turns between the two clock readings, the next
    -- (so no row is ever in an older week's partition than its time says)
    slot             smallint NOT NULL DEFAULT otp.event_slot(pg_catalog.clock_timestamp()),
    agent            text NOT NULL,
    conversation     text,
    subject          text,
    event            otp.event_word NOT NULL,
    channel          text,
    destination_hint text,
    PRIMARY KEY (id, slot)
) PARTITION BY LIST (slot);
DO $partitions$
BEGIN
    FOR slot IN 0..52 LOOP
        EXECUTE pg_catalog.format('CREATE TABLE otp.%I PARTITION OF otp.event FOR VALUES IN (%s)',
                                  'event_' || pg_catalog.lpad(slot::text, 2, '0'), slot);
    END LOOP;
END
$partitions$;
CREATE INDEX event_by_subject ON otp.event (agent, subject, at);
-- For purging by age. BRIN: events arrive in time order, so a block-range
-- summary finds old ones at a fraction of a B-tree's cost per insert. Each
-- range is summarized as soon as it fills, so that the purge's look for old
-- rows in this week's partition skips all of it but the last range.
CREATE INDEX event_by_time ON otp.event USING brin (at) WITH (autosummarize = on);

CREATE FUNCTION otp.refuse_event_update() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'otp.event is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER event_append_only BEFORE UPDATE ON otp.event
    FOR EACH ROW EXECUTE FUNCTION otp.refuse_event_update();
