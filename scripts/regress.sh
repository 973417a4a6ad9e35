#!/usr/bin/env bash
# Runs the pg_regress suite against a running cluster of PG_VERSION.
#   regress.sh HOST_DIR PORT [WORK_DIR]
# Results and regression.diffs go to tests/pg_regress, or to WORK_DIR (a
# copy of the suite there), so that suites for several versions can run at
# once. An expected file NAME_1.out is pg_regress's alternative for where a
# PostgreSQL version's own output differs: privileges_1.out, PostgreSQL
# 16's wording of the refusal to show a superuser-only setting.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh
dir=tests/pg_regress
if [ -n "${3:-}" ]; then
    rm -rf "$3"
    mkdir -p "$3"
    cp -r tests/pg_regress/sql tests/pg_regress/expected "$3/"
    dir=$3
fi
"$(pg_regress_bin)" \
    --bindir="$PG_BIN" --host="$1" --port="$2" --user=postgres \
    --dbname=pg_otp_regress --inputdir="$dir" --outputdir="$dir" \
    setup conversation expiry limits hiding privileges escalation data_access errors purge rotation upgrade
