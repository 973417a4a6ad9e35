#!/usr/bin/env bash
# Runs the pg_regress suite against a running cluster (used by test.sh).
#   regress.sh HOST_DIR PORT
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh
"$(dirname "$("$PG_BIN/pg_config" --pgxs)")/../test/regress/pg_regress" \
    --bindir="$PG_BIN" --host="$1" --port="$2" --user=postgres \
    --dbname=pg_otp_regress --inputdir=tests/pg_regress --outputdir=tests/pg_regress \
    setup conversation expiry limits hiding privileges escalation data_access errors purge rotation upgrade
