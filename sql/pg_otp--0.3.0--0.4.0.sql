-- pg_otp 0.3.0 -> 0.4.0: messages in the person's language and time zone.
-- An agent may name the source's columns holding each person's language (a
-- BCP 47 tag) and time zone (an IANA name); every message carries them, and
-- otp_outbox_claim returns them, so that the dispatcher writes to each
-- person in their language and tells the expiry in their time.
-- Run by ALTER EXTENSION pg_otp UPDATE TO '0.4.0'. Nothing here rewrites a
-- row: pending codes, queued messages and sessions carry on (messages
-- queued before have no language: they go out in the agent's).
\echo Use "ALTER EXTENSION pg_otp UPDATE TO '0.4.0'" to load this file. \quit

ALTER TABLE otp.agent ADD COLUMN language_column text, ADD COLUMN time_zone_column text;
ALTER TABLE otp.outbox
    ADD COLUMN language text
        CONSTRAINT outbox_language_is_a_tag
        CHECK (length(language) <= 35 AND language ~ '^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$'),
    ADD COLUMN time_zone text
        CONSTRAINT outbox_time_zone_is_a_name
        CHECK (length(time_zone) <= 64 AND time_zone ~ '^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$');

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
