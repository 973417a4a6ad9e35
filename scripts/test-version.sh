#!/usr/bin/env bash
# Tests pg_otp on one more PostgreSQL major version (scripts/test.sh runs the
# whole suite on 15 and this for 16, 17 and 18):
#   1. the #[pg_test] suite inside PostgreSQL (cargo pgrx test)
#   2. the extension's Debian package for that version (scripts/package.sh),
#      checked with lintian, installed into it (scripts/install-package.sh)
#   3. pg_regress against a throwaway cluster of that version
#   4. the upgrade tests: each release updated to this one
#   5. from 17 on, a full notification queue (tests/integration/tests/notify_queue.rs)
# Builds go to target/other (CARGO_TARGET_DIR, shared by 16-18: what does
# not depend on the PostgreSQL version is built once), logs, packages and
# pg_regress results to target/pgN. With RESULTS=FILE, each step appends
# "MAJOR STEP passed|failed SECONDS DETAIL" to FILE (test.sh's summary
# table).
#   bash scripts/test-version.sh 17
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

major=${1:?usage: test-version.sh MAJOR}
export PG_VERSION=$major
source scripts/postgres.sh
PG_VERSIONS=$major bash scripts/setup.sh
results=${RESULTS:-/dev/null}
cluster=/tmp/pg_otp-cluster-$major
port=$((54350 + major))   # 54367 for 17
work=target/pg$major
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/other}
log=$work/log
mkdir -p "$log"
features=()
[ "$major" = 15 ] || features=(--no-default-features --features "pg$major")

# step NAME COMMAND...: runs it with its output in $log/NAME.log (and on
# the terminal), records the outcome, stops the version at a failure.
step() {
    local name=$1 started=$SECONDS detail
    shift
    echo "==> PostgreSQL $major: $name"
    # a pipe, not >(tee): the log must be complete before it is counted
    if "$@" 2>&1 | tee "$log/$name.log"; then
        passed=$(awk -f scripts/tests-passed.awk "$log/$name.log")
        [ "$passed" != 0 ] || passed=""
        echo "$major $name passed $((SECONDS - started)) ${passed:+$passed passed}" >>"$results"
    else
        echo "$major $name failed $((SECONDS - started)) see $log/$name.log" >>"$results"
        echo "PostgreSQL $major: $name failed (log: $log/$name.log)" >&2
        exit 1
    fi
}

trap 'bash scripts/pg-cluster.sh stop "$cluster"' EXIT
rm -rf "/tmp/pg_otp-pgrx-$major" # pgrx creates it as postgres
step pg_test cargo pgrx test "pg$major" --runas postgres --pgdata "/tmp/pg_otp-pgrx-$major/data" "${features[@]}"
step package env PG_VERSIONS="$major" bash scripts/package.sh --extension-only "$work/debian"
step lintian lintian --fail-on error,warning "$work/debian/postgresql-$major-pg-otp_"*_amd64.deb
step install bash scripts/install-package.sh "$major" "$work/debian"
bash scripts/pg-cluster.sh start "$cluster" "$port"
step pg_regress bash scripts/regress.sh "$cluster" "$port" "$work/regress"
step upgrade env PG_OTP_TEST_HOST="$cluster" PG_OTP_TEST_PORT="$port" \
    PG_OTP_TEST_LOG="$cluster/server.log" PG_OTP_TEST_PGDATA="$cluster/data" \
    cargo test -q -p pg_otp_integration --test upgrade -- --test-threads=1
# A full notification queue (its size is a setting from 17 on; 15's suite
# skips this test): a cluster of the test's own.
if [ "$major" -ge 17 ]; then
    step notify_queue cargo test -q -p pg_otp_integration --test notify_queue
fi
