#!/usr/bin/env bash
# Runs the #[pg_test] suite (129 tests inside PostgreSQL) on another
# PostgreSQL major version, after installing it (scripts/install-postgres.sh)
# and telling pgrx where it is. The whole suite, scripts/test.sh, runs on 15.
#   bash scripts/test-version.sh 17
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

major=${1:?usage: test-version.sh MAJOR}
PG_VERSIONS="15 $major" bash scripts/setup.sh
data=/tmp/pg_otp-pgrx-$major
rm -rf "$data" # pgrx creates it as postgres
features=()
[ "$major" = 15 ] || features=(--no-default-features --features "pg$major")
cargo pgrx test "pg$major" --runas postgres --pgdata "$data/data" "${features[@]}"
