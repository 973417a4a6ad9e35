-- pg_otp 0.3.0 -> 0.4.0: messages in the person's language and time zone.
-- An agent may name the source's columns holding each person's language (a
-- BCP 47 tag) and time zone (an IANA name); every message carries them, and
-- otp_outbox_claim returns them, so that the dispatcher writes to each
-- person in their language and tells the expiry in their time.
-- Also: the vocabularies and fixed-length values become domains (below).
-- Also: the audit trail is partitioned by week (below).
-- Run by ALTER EXTENSION pg_otp UPDATE TO '0.4.0'. Only the audit trail's
-- rows are rewritten: pending codes, queued messages and sessions carry on
-- (messages queued before have no language: they go out in the agent's).
\echo Use "ALTER EXTENSION pg_otp UPDATE TO '0.4.0'" to load this file. \quit

-- The vocabularies and fixed-length values become domains, as in schema.sql
-- (which says why): a table's CHECK is read back and planned again at every
-- INSERT and UPDATE, a domain's is kept in the type cache. No row is
-- rewritten: each column changes type while its domain has no constraint
-- yet (text to a domain over text needs no rewrite then), and ALTER DOMAIN
-- ADD CONSTRAINT at the end checks the rows already there, which the
-- table CHECKs dropped here held to the same words.
CREATE DOMAIN otp.channel AS text;
CREATE DOMAIN otp.challenge_state AS text;
CREATE DOMAIN otp.delivery_state AS text;
CREATE DOMAIN otp.message_state AS text;
CREATE DOMAIN otp.event_word AS text;
CREATE DOMAIN otp.digest AS bytea;
CREATE DOMAIN otp.key_id AS bytea;
CREATE DOMAIN otp.language_tag AS text;
CREATE DOMAIN otp.time_zone_name AS text;
REVOKE USAGE ON DOMAIN otp.channel, otp.challenge_state, otp.delivery_state, otp.message_state, otp.event_word,
    otp.digest, otp.key_id, otp.language_tag, otp.time_zone_name FROM PUBLIC;

ALTER TABLE otp.agent ADD COLUMN language_column text, ADD COLUMN time_zone_column text,
    DROP CONSTRAINT agent_preferred_channel_check,
    ALTER preferred_channel TYPE otp.channel;
ALTER TABLE otp.challenge
    DROP CONSTRAINT challenge_channel_check,
    DROP CONSTRAINT challenge_destination_key_check,
    DROP CONSTRAINT challenge_code_hash_check,
    DROP CONSTRAINT challenge_key_id_check,
    DROP CONSTRAINT challenge_state_check,
    DROP CONSTRAINT challenge_delivery_check,
    ALTER channel TYPE otp.channel,
    ALTER destination_key TYPE otp.digest,
    ALTER code_hash TYPE otp.digest,
    ALTER key_id TYPE otp.key_id,
    ALTER state DROP DEFAULT, ALTER state TYPE otp.challenge_state, ALTER state SET DEFAULT 'pending',
    ALTER delivery DROP DEFAULT, ALTER delivery TYPE otp.delivery_state, ALTER delivery SET DEFAULT 'queued';
ALTER TABLE otp.outbox
    DROP CONSTRAINT outbox_channel_check,
    DROP CONSTRAINT outbox_fallback_channel_check,
    DROP CONSTRAINT outbox_key_id_check,
    DROP CONSTRAINT outbox_state_check,
    ALTER channel TYPE otp.channel,
    ALTER fallback_channel TYPE otp.channel,
    ALTER key_id TYPE otp.key_id,
    ALTER state DROP DEFAULT, ALTER state TYPE otp.message_state, ALTER state SET DEFAULT 'queued',
    ADD COLUMN language otp.language_tag,
    ADD COLUMN time_zone otp.time_zone_name;
ALTER TABLE otp.session
    DROP CONSTRAINT session_token_hash_check,
    DROP CONSTRAINT session_channel_check,
    DROP CONSTRAINT session_destination_key_check,
    DROP CONSTRAINT session_key_id_check,
    ALTER token_hash TYPE otp.digest,
    ALTER channel TYPE otp.channel,
    ALTER destination_key TYPE otp.digest,
    ALTER key_id TYPE otp.key_id;

ALTER DOMAIN otp.channel ADD CONSTRAINT channel_words CHECK (VALUE IN ('whatsapp', 'email'));
ALTER DOMAIN otp.challenge_state ADD CONSTRAINT challenge_state_words
    CHECK (VALUE IN ('pending', 'verified', 'locked', 'superseded', 'expired', 'record_changed'));
ALTER DOMAIN otp.delivery_state ADD CONSTRAINT delivery_state_words
    CHECK (VALUE IN ('queued', 'sent', 'delivered', 'read', 'failed', 'expired', 'cancelled'));
ALTER DOMAIN otp.message_state ADD CONSTRAINT message_state_words
    CHECK (VALUE IN ('queued', 'sending', 'sent', 'delivered', 'read', 'failed', 'expired', 'cancelled'));
ALTER DOMAIN otp.event_word ADD CONSTRAINT event_words CHECK (VALUE IN (
    'issued', 'delivered', 'delivery_failed', 'verified', 'incorrect', 'locked',
    'expired', 'superseded', 'rate_limited', 'session_started', 'session_expired',
    'session_revoked', 'record_changed', 'received', 'read'));
ALTER DOMAIN otp.digest ADD CONSTRAINT digest_length CHECK (length(VALUE) = 32);
ALTER DOMAIN otp.key_id ADD CONSTRAINT key_id_length CHECK (length(VALUE) = 8);
ALTER DOMAIN otp.language_tag ADD CONSTRAINT language_tag_form
    CHECK (length(VALUE) <= 35 AND VALUE ~ '^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$');
ALTER DOMAIN otp.time_zone_name ADD CONSTRAINT time_zone_name_form
    CHECK (length(VALUE) <= 64 AND VALUE ~ '^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$');

-- The audit trail becomes a ring of weekly partitions, as in schema.sql
-- (which says why). Its rows are copied into the new table in one pass (the
-- only rows this update rewrites: docs/operations.md says how long it
-- takes), with their ids, and its identity sequence carries on where the
-- old one stood.
ALTER TABLE otp.event RENAME TO event_0_3;
ALTER INDEX otp.event_pkey RENAME TO event_0_3_pkey;
ALTER INDEX otp.event_by_subject RENAME TO event_0_3_by_subject;
ALTER INDEX otp.event_by_time RENAME TO event_0_3_by_time;
ALTER SEQUENCE otp.event_id_seq RENAME TO event_0_3_id_seq;
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
INSERT INTO otp.event (id, at, slot, agent, conversation, subject, event, channel, destination_hint)
    OVERRIDING SYSTEM VALUE
SELECT id, at, otp.event_slot(at), agent, conversation, subject, event, channel, destination_hint
  FROM otp.event_0_3;
SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('otp.event', 'id'), last_value, is_called)
  FROM otp.event_0_3_id_seq;
DROP TABLE otp.event_0_3;
CREATE INDEX event_by_subject ON otp.event (agent, subject, at);
-- For purging by age. BRIN: events arrive in time order, so a block-range
-- summary finds old ones at a fraction of a B-tree's cost per insert. Each
-- range is summarized as soon as it fills, so that the purge's look for old
-- rows in this week's partition skips all of it but the last range.
CREATE INDEX event_by_time ON otp.event USING brin (at) WITH (autosummarize = on);
CREATE TRIGGER event_append_only BEFORE UPDATE ON otp.event
    FOR EACH ROW EXECUTE FUNCTION otp.refuse_event_update();
-- The privileges and owner the rest of pg_otp has (see sql/privileges.sql).
REVOKE ALL ON otp.event FROM PUBLIC;
REVOKE ALL ON SEQUENCE otp.event_id_seq FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION otp.event_slot(timestamptz) FROM PUBLIC;
ALTER FUNCTION otp.event_slot(timestamptz) OWNER TO otp_owner;
ALTER TABLE otp.event OWNER TO otp_owner;
DO $owner$
BEGIN
    FOR slot IN 0..52 LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON otp.%1$I FROM PUBLIC; ALTER TABLE otp.%1$I OWNER TO otp_owner',
                                  'event_' || pg_catalog.lpad(slot::text, 2, '0'));
    END LOOP;
END
$owner$;

-- otp_configure takes language_column and time_zone_column. (The library keeps the 0.3.0 entry
-- point, so the old function kept working until now.)
DROP FUNCTION @extschema@.otp_configure(text, regclass, text, text, text, boolean, interval, integer, interval,
                                        interval, text, integer, interval, interval, integer, interval, boolean, text);
CREATE FUNCTION @extschema@."otp_configure"(
	"agent" TEXT,
	"source" regclass,
	"id_column" TEXT,
	"phone_column" TEXT DEFAULT NULL,
	"email_column" TEXT DEFAULT NULL,
	"require_otp" bool DEFAULT true,
	"code_ttl" interval DEFAULT '5 minutes',
	"max_attempts" INT DEFAULT 3,
	"idle_timeout" interval DEFAULT '30 minutes',
	"absolute_timeout" interval DEFAULT '24 hours',
	"preferred_channel" TEXT DEFAULT 'whatsapp',
	"max_codes" INT DEFAULT 5,
	"code_window" interval DEFAULT '15 minutes',
	"resend_cooldown" interval DEFAULT '30 seconds',
	"lockout_threshold" INT DEFAULT 20,
	"lockout_duration" interval DEFAULT '1 hour',
	"reveal_unknown" bool DEFAULT true,
	"app_role" TEXT DEFAULT NULL,
	"language_column" TEXT DEFAULT NULL,
	"time_zone_column" TEXT DEFAULT NULL
) RETURNS void
SECURITY DEFINER
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'otp_configure_with_locale_wrapper';

-- otp_outbox_claim returns the language and the time zone. A new result column changes the
-- function's type: it is dropped and created again (the library keeps the
-- 0.3.0 entry point, so dispatchers kept claiming until now; they select
-- their columns by name, so a 0.3.0 dispatcher keeps working after it).
DROP FUNCTION @extschema@.otp_outbox_claim(integer, interval);
CREATE FUNCTION @extschema@."otp_outbox_claim"(
	"batch_size" INT DEFAULT 16,
	"lease" interval DEFAULT '30 seconds'
) RETURNS TABLE (
	"message_id" bigint,
	"agent" TEXT,
	"conversation" TEXT,
	"channel" TEXT,
	"destination" TEXT,
	"code" TEXT,
	"expires_at" timestamp with time zone,
	"attempt" INT,
	"language" TEXT,
	"time_zone" TEXT
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'otp_outbox_claim_with_locale_wrapper';

-- The privileges, owner and settings the dropped functions had (see
-- sql/privileges.sql).
REVOKE EXECUTE ON FUNCTION
    @extschema@.otp_configure(text, regclass, text, text, text, boolean, interval, integer, interval,
                              interval, text, integer, interval, interval, integer, interval, boolean, text, text, text),
    @extschema@.otp_outbox_claim(integer, interval)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    @extschema@.otp_configure(text, regclass, text, text, text, boolean, interval, integer, interval,
                              interval, text, integer, interval, interval, integer, interval, boolean, text, text, text)
TO otp_admin;
GRANT EXECUTE ON FUNCTION @extschema@.otp_outbox_claim(integer, interval) TO otp_dispatcher;
ALTER FUNCTION @extschema@.otp_configure(text, regclass, text, text, text, boolean, interval, integer, interval,
                                         interval, text, integer, interval, interval, integer, interval, boolean,
                                         text, text, text)
    OWNER TO otp_owner;
ALTER FUNCTION @extschema@.otp_outbox_claim(integer, interval) OWNER TO otp_owner;
ALTER FUNCTION @extschema@.otp_outbox_claim(integer, interval)
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off;

-- No sequential scans in the functions with generic plans (see
-- sql/privileges.sql): a plan made while a table was small would otherwise
-- read the whole table at every call for the connection's lifetime.
ALTER FUNCTION @extschema@.otp_issue(text, text, text) SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_verify(text, text, text) SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_status(text, text) SET enable_seqscan = off;
ALTER FUNCTION @extschema@.session_touch(text) SET enable_seqscan = off;
ALTER FUNCTION @extschema@.session_revoke(text) SET enable_seqscan = off;
ALTER FUNCTION @extschema@.session_use(text) SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_sessions(text, text) SET enable_seqscan = off;
ALTER FUNCTION @extschema@.session_revoke_all(text, text) SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_outbox_sent(bigint, integer, text) SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_outbox_failed(bigint, integer, text, boolean) SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_outbox_expired(bigint, integer) SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_outbox_sweep() SET enable_seqscan = off;
ALTER FUNCTION @extschema@.otp_outbox_status(text, bigint, text, timestamptz, text, boolean) SET enable_seqscan = off;
