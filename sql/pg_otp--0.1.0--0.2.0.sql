-- pg_otp 0.1.0 -> 0.2.0. Run by ALTER EXTENSION pg_otp UPDATE TO '0.2.0'.
-- Pending codes, queued messages and sessions are kept as they are: nothing
-- here rewrites a row. (0.2.0's library also runs against the 0.1.0 schema,
-- so a restart with the new library before this update is safe.)
\echo Use "ALTER EXTENSION pg_otp UPDATE TO '0.2.0'" to load this file. \quit

-- The claim takes messages in (available_at, id) order; with id in the index
-- the scan needs no sort and stops at the batch size.
DROP INDEX otp.outbox_due;
CREATE INDEX outbox_due ON otp.outbox (available_at, id) WHERE state IN ('queued', 'sending');

-- Events arrive in time order: a BRIN index serves the purge by age at a
-- fraction of a B-tree's cost on every insert (three events per sign-in).
DROP INDEX otp.event_by_time;
CREATE INDEX event_by_time ON otp.event USING brin (at);

-- Generic plans for the statements these functions prepare (see
-- sql/privileges.sql): the plan cache otherwise re-plans some on every call.
ALTER FUNCTION @extschema@.otp_issue(text, text, text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_verify(text, text, text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_status(text, text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.session_touch(text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.session_revoke(text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_outbox_claim(integer, interval) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_outbox_sent(bigint, text) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_outbox_failed(bigint, text, boolean) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION @extschema@.otp_outbox_expired(bigint) SET plan_cache_mode = force_generic_plan;
