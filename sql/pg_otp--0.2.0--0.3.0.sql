-- pg_otp 0.2.0 -> 0.3.0: the fixes of an attack on 0.2.0 (see README,
-- Security model), and sessions that guard the data (README, Sessions and
-- your data). Run by ALTER EXTENSION pg_otp UPDATE TO '0.3.0'. Nothing here
-- rewrites a row: pending codes, queued messages and sessions carry on
-- (sessions started before have no fingerprint: only the person's presence
-- in the source is checked for them).
\echo Use "ALTER EXTENSION pg_otp UPDATE TO '0.3.0'" to load this file. \quit

-- Delivery reports name the attempt the claim returned, so that a
-- dispatcher whose lease ran out cannot overwrite the outcome of a later
-- claim; they say whether they were applied. (The library keeps the old
-- entry points: the 0.2.0 functions kept working until this update.)
DROP FUNCTION @extschema@.otp_outbox_sent(bigint, text);
DROP FUNCTION @extschema@.otp_outbox_failed(bigint, text, boolean);
DROP FUNCTION @extschema@.otp_outbox_expired(bigint);

CREATE FUNCTION @extschema@."otp_outbox_sent"(
    "message_id" bigint,
    "attempt" INT,
    "provider_ref" TEXT
) RETURNS bool
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'otp_outbox_sent_fenced_wrapper';

CREATE FUNCTION @extschema@."otp_outbox_failed"(
    "message_id" bigint,
    "attempt" INT,
    "error" TEXT,
    "retryable" bool
) RETURNS bool
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'otp_outbox_failed_fenced_wrapper';

CREATE FUNCTION @extschema@."otp_outbox_expired"(
    "message_id" bigint,
    "attempt" INT
) RETURNS bool
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'otp_outbox_expired_fenced_wrapper';

-- An operator's way to end a lockout early (it also clears the attempt
-- ledger, which no UPDATE reaches).
CREATE FUNCTION @extschema@."otp_unlock"(
    "agent" TEXT,
    "subject" TEXT
) RETURNS bool
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'otp_unlock_wrapper';

-- The sweep: what the claim used to do besides claiming (src/delivery/sweep.rs).
CREATE FUNCTION @extschema@."otp_outbox_sweep"() RETURNS TABLE (
    "finished" bigint,
    "decoys" bigint
)
STRICT VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'otp_outbox_sweep_wrapper';

-- Provider statuses (delivery webhooks): src/delivery/status.rs.
CREATE FUNCTION @extschema@."otp_outbox_status"(
    "provider_ref" TEXT,
    "message_id" bigint,
    "status" TEXT,
    "at" timestamp with time zone,
    "error" TEXT,
    "retryable" bool
) RETURNS TEXT
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'otp_outbox_status_wrapper';

-- otp_status tells whether only the primary device receives the channel.
DROP FUNCTION @extschema@.otp_status(text, text);
CREATE FUNCTION @extschema@."otp_status"(
    "agent" TEXT,
    "conversation" TEXT
) RETURNS TABLE (
    "status" TEXT,
    "channel" TEXT,
    "destination_hint" TEXT,
    "delivery" TEXT,
    "attempts_remaining" INT,
    "expires_at" timestamp with time zone,
    "primary_device_only" bool
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'otp_status_with_device_wrapper';
REVOKE EXECUTE ON FUNCTION @extschema@.otp_status(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.otp_status(text, text) TO otp_app;
ALTER FUNCTION @extschema@.otp_status(text, text) SET plan_cache_mode = force_generic_plan;

REVOKE EXECUTE ON FUNCTION
    @extschema@.otp_outbox_status(text, bigint, text, timestamptz, text, boolean),
    @extschema@.otp_outbox_sweep(),
    @extschema@.otp_outbox_sent(bigint, integer, text),
    @extschema@.otp_outbox_failed(bigint, integer, text, boolean),
    @extschema@.otp_outbox_expired(bigint, integer),
    @extschema@.otp_unlock(text, text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    @extschema@.otp_outbox_sent(bigint, integer, text),
    @extschema@.otp_outbox_failed(bigint, integer, text, boolean),
    @extschema@.otp_outbox_expired(bigint, integer),
    @extschema@.otp_outbox_sweep(),
    @extschema@.otp_outbox_status(text, bigint, text, timestamptz, text, boolean)
TO otp_dispatcher;
ALTER FUNCTION @extschema@.otp_outbox_sweep() SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_outbox_status(text, bigint, text, timestamptz, text, boolean)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_outbox_sent(bigint, integer, text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_outbox_failed(bigint, integer, text, boolean) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_outbox_expired(bigint, integer) SET plan_cache_mode = force_generic_plan;

-- An agent may name the role whose members alone act for it; a hiding
-- agent keeps what its decoys look like (see sql/schema.sql).
ALTER TABLE otp.agent ADD COLUMN app_role regrole, ADD COLUMN decoy_shapes text[];

-- A session is tied to the address its code went to (a keyed fingerprint,
-- no plaintext) and ends when the person's record changes.
ALTER TABLE otp.session
    ADD COLUMN channel text CHECK (channel IN ('whatsapp', 'email')),
    ADD COLUMN destination_key bytea CHECK (length(destination_key) = 32),
    ADD COLUMN key_id bytea CHECK (length(key_id) = 8),
    ADD COLUMN record_changed_at timestamptz,
    ADD CONSTRAINT session_check1
        CHECK ((channel IS NULL) = (destination_key IS NULL) AND (channel IS NULL) = (key_id IS NULL));
CREATE INDEX session_by_subject ON otp.session (agent, subject);

-- Decoys' messages get an index of their own: a flood of them no longer
-- takes the places of real messages in the dispatchers' claims.
DROP INDEX otp.outbox_due;
CREATE INDEX outbox_due ON otp.outbox (available_at, id)
    WHERE state IN ('queued', 'sending') AND destination <> '';
CREATE INDEX outbox_decoys_due ON otp.outbox (available_at, id)
    WHERE state IN ('queued', 'sending') AND destination = '';

-- The new word for a code or session whose record changed.
ALTER TABLE otp.challenge DROP CONSTRAINT challenge_state_check,
    ADD CONSTRAINT challenge_state_check
        CHECK (state IN ('pending', 'verified', 'locked', 'superseded', 'expired', 'record_changed'));
ALTER TABLE otp.event DROP CONSTRAINT event_event_check,
    ADD CONSTRAINT event_event_check CHECK (event IN (
        'issued', 'delivered', 'delivery_failed', 'verified', 'incorrect', 'locked',
        'expired', 'superseded', 'rate_limited', 'session_started', 'session_expired',
        'session_revoked', 'record_changed', 'received', 'read'));

-- Delivery confirmed by the provider's status webhooks: `delivered` and
-- `read`; a `sent` message may keep its sealed code until then, for a late
-- fallback (see sql/schema.sql).
ALTER TABLE otp.outbox DROP CONSTRAINT outbox_state_check,
    ADD CONSTRAINT outbox_state_check
        CHECK (state IN ('queued', 'sending', 'sent', 'delivered', 'read', 'failed', 'expired', 'cancelled'));
ALTER TABLE otp.challenge DROP CONSTRAINT challenge_delivery_check,
    ADD CONSTRAINT challenge_delivery_check
        CHECK (delivery IN ('queued', 'sent', 'delivered', 'read', 'failed', 'expired', 'cancelled'));
ALTER TABLE otp.outbox DROP CONSTRAINT outbox_check,
    ADD CONSTRAINT outbox_code_only_while_open
        CHECK ((code_sealed IS NULL) = (code_nonce IS NULL)
               AND (state NOT IN ('queued', 'sending') OR code_sealed IS NOT NULL)
               AND (state IN ('queued', 'sending', 'sent') OR code_sealed IS NULL));
CREATE INDEX outbox_by_provider_ref ON otp.outbox (provider_ref) WHERE provider_ref IS NOT NULL;
CREATE INDEX outbox_held_codes ON otp.outbox (expires_at) WHERE state = 'sent' AND code_sealed IS NOT NULL;

-- Names that say what the table-level checks guarantee (vocabulary checks
-- keep the names PostgreSQL gave them, now spelled in schema.sql).
ALTER TABLE otp.challenge RENAME CONSTRAINT challenge_check1 TO challenge_ended_iff_final;
ALTER TABLE otp.outbox RENAME CONSTRAINT outbox_check1 TO outbox_finished_iff_final;
ALTER TABLE otp.outbox RENAME CONSTRAINT outbox_check2 TO outbox_fallback_complete;
ALTER TABLE otp.outbox RENAME CONSTRAINT outbox_check3 TO outbox_fallback_differs;

-- otp_configure takes app_role. (The library keeps the old entry point, so
-- the 0.2.0 function kept working until now.)
DROP FUNCTION @extschema@.otp_configure(text, regclass, text, text, text, boolean, interval, integer, interval,
                                        interval, text, integer, interval, interval, integer, interval, boolean);
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
	"app_role" TEXT DEFAULT NULL
) RETURNS void
SECURITY DEFINER
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'otp_configure_with_role_wrapper';

-- Binding a transaction to a session; listing and ending a person's sessions.
CREATE FUNCTION @extschema@."session_use"(
	"session_token" TEXT
) RETURNS TABLE (
	"status" TEXT, 
	"agent" TEXT, 
	"conversation" TEXT, 
	"subject" TEXT, 
	"idle_expires_at" timestamp with time zone, 
	"expires_at" timestamp with time zone 
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'session_use_wrapper';

CREATE FUNCTION @extschema@."otp_subject"(
	"agent" TEXT
) RETURNS TEXT
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'otp_subject_wrapper';

CREATE FUNCTION @extschema@."otp_sessions"(
	"agent" TEXT,
	"subject" TEXT
) RETURNS TABLE (
	"conversation" TEXT, 
	"started_at" timestamp with time zone, 
	"last_used_at" timestamp with time zone, 
	"idle_expires_at" timestamp with time zone, 
	"expires_at" timestamp with time zone 
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'otp_sessions_wrapper';

CREATE FUNCTION @extschema@."session_revoke_all"(
	"agent" TEXT,
	"subject" TEXT
) RETURNS INT
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'session_revoke_all_wrapper';

REVOKE EXECUTE ON FUNCTION
    @extschema@.otp_configure(text, regclass, text, text, text, boolean, interval, integer, interval,
                              interval, text, integer, interval, interval, integer, interval, boolean, text),
    @extschema@.session_use(text),
    @extschema@.otp_subject(text),
    @extschema@.otp_sessions(text, text),
    @extschema@.session_revoke_all(text, text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    @extschema@.session_use(text),
    @extschema@.otp_subject(text),
    @extschema@.otp_sessions(text, text),
    @extschema@.session_revoke_all(text, text)
TO otp_app;
ALTER FUNCTION @extschema@.session_use(text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_sessions(text, text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.session_revoke_all(text, text) SET plan_cache_mode = force_generic_plan;

-- pg_otp's state and SECURITY DEFINER functions now belong to otp_owner, a
-- role without login, members or attributes, instead of the superuser who
-- ran CREATE EXTENSION (see sql/privileges.sql).
DO $roles$
DECLARE
    saved_path text := pg_catalog.current_setting('search_path');
BEGIN
    -- Resolve every name in this block in pg_catalog only (see the note above).
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'otp_owner') THEN
        CREATE ROLE otp_owner NOLOGIN;
        COMMENT ON ROLE otp_owner IS 'pg_otp: owns schema otp and runs the SECURITY DEFINER functions; never grant it to anyone';
    ELSIF EXISTS (SELECT FROM pg_catalog.pg_roles
                   WHERE rolname = 'otp_owner'
                     AND (rolcanlogin OR rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls))
       OR EXISTS (SELECT FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles r ON r.oid = m.roleid
                   WHERE r.rolname = 'otp_owner') THEN
        RAISE EXCEPTION 'pg_otp: role otp_owner already exists and can log in, has attributes or has members'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Whoever can act as otp_owner could read and change all of pg_otp''s state. '
                         'Drop the role (or remove its members and attributes) before CREATE EXTENSION.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'otp_app') THEN
        CREATE ROLE otp_app NOLOGIN;
        COMMENT ON ROLE otp_app IS 'pg_otp: may call otp_issue, otp_verify, otp_status, otp_events, session_touch, session_revoke';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'otp_dispatcher') THEN
        CREATE ROLE otp_dispatcher NOLOGIN;
        COMMENT ON ROLE otp_dispatcher IS 'pg_otp: may use the outbox protocol (otp_outbox_*) only';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'otp_admin') THEN
        CREATE ROLE otp_admin NOLOGIN;
        COMMENT ON ROLE otp_admin IS 'pg_otp: may configure agents (otp_configure) on sources its members own';
    END IF;
    PERFORM pg_catalog.set_config('search_path', saved_path, true);
END
$roles$;

-- otp_configure runs as otp_owner (nobody else writes otp.agent); members
-- of otp_admin may call it, for sources they own.
GRANT USAGE ON SCHEMA @extschema@ TO otp_admin;
GRANT EXECUTE ON FUNCTION
    @extschema@.otp_configure(text, regclass, text, text, text, boolean, interval, integer, interval,
                              interval, text, integer, interval, interval, integer, interval, boolean, text)
TO otp_admin;

-- Everything of pg_otp belongs to otp_owner (see above).
DO $owner$
DECLARE
    saved_path text := pg_catalog.current_setting('search_path');
    member record;
BEGIN
    -- Resolve every name in this block in pg_catalog only (see the note above).
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    ALTER SCHEMA otp OWNER TO otp_owner;
    FOR member IN
        SELECT pg_catalog.format('ALTER %s %s OWNER TO otp_owner',
                   CASE d.classid WHEN 'pg_catalog.pg_proc'::pg_catalog.regclass THEN 'FUNCTION'
                                  ELSE 'TABLE'   -- with its indexes and sequences
                   END,
                   CASE d.classid WHEN 'pg_catalog.pg_proc'::pg_catalog.regclass THEN d.objid::pg_catalog.regprocedure::text
                                  ELSE d.objid::pg_catalog.regclass::text
                   END) AS statement
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_otp'
          LEFT JOIN pg_catalog.pg_class c ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND c.oid = d.objid
         WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
           AND d.deptype = 'e'
           AND (d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                OR (d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND c.relkind = 'r'))
    LOOP
        EXECUTE member.statement;
    END LOOP;
    PERFORM pg_catalog.set_config('search_path', saved_path, true);
END
$owner$;
