#!/usr/bin/env bash
# Runs every test of pg_otp. On a fresh Debian 12 machine, as root, it first
# installs what it needs (scripts/setup.sh), PostgreSQL 16, 17 and 18
# included. Steps:
#   1. the documentation (links, and every command block run or tested),
#      rustfmt and clippy
#   2. #[pg_test] unit tests inside PostgreSQL 15 (cargo pgrx test)
#   3. README.md's try command (scripts/try.sh, the example conversation
#      played without a terminal)
#   4. the install commands of docs/install.md as written: from source, then
#      the Debian packages built, checked with lintian, the extension's
#      installed with dpkg; the example conversation on Debian's own
#      cluster (15/main) restarted with pg_otp preloaded; pg_regress SQL
#      tests against a throwaway cluster with it
#   5. integration tests: many real connections against the same cluster,
#      attacks, a crash under load, key rotation, a million rows of history,
#      the upgrade from each release, the documentation's SQL
#   6. otp-dispatcher tests: the binary against the same cluster, a fake
#      WhatsApp Cloud API and a real SMTP server, all on loopback; its
#      systemd unit checked with systemd-analyze; the example conversation
#   7. PostgreSQL 16, 17 and 18 (scripts/test-version.sh), one after the
#      other, in the background from step 3 on, with one build job so that
#      the steps above keep a core: #[pg_test], each one's package built and
#      installed, pg_regress, the upgrade tests
# and prints a table: per PostgreSQL version, each step's result and time.
# PG_OTP_TEST_VERSIONS="16 18" (say) limits step 7; "" skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

source scripts/postgres.sh
OTHER_VERSIONS=${PG_OTP_TEST_VERSIONS-16 17 18}
PGRX_DATA=/tmp/pg_otp-pgrx
CLUSTER=/tmp/pg_otp-cluster
PORT=54329

# Every runner's output also goes to this log, for the closing total; each
# step's outcome and time go to the summary.
RESULTS=$(mktemp)
SUMMARY=$(mktemp)
counted() { "$@" 2>&1 | tee -a "$RESULTS"; }
current="" started=0 mark=0
# The tests the runners reported since line $mark of the results.
tests_since() {
    local passed
    passed=$(tail -n +"$((mark + 1))" "$RESULTS" | awk -f scripts/tests-passed.awk)
    [ "$passed" = 0 ] || echo "$passed passed"
}
# step NAME: starts a timed step of the PostgreSQL 15 suite (the previous one passed).
step() {
    [ -z "$current" ] || echo "15 $current passed $((SECONDS - started)) $(tests_since)" >>"$SUMMARY"
    current=$1 started=$SECONDS mark=$(wc -l <"$RESULTS")
    [ -z "$1" ] || printf '\n==> %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"
}
others=""   # the background job testing OTHER_VERSIONS (its process group)
# At an exit before the end: the failed step recorded, the other versions stopped.
cleanup() {
    if [ -n "$current" ]; then
        echo "15 $current failed $((SECONDS - started))" >>"$SUMMARY"
        table >&2
    fi
    [ -z "$others" ] || kill -- "-$others" 2>/dev/null || true
    bash scripts/pg-cluster.sh stop "$CLUSTER"
    rm -f "$RESULTS" "$SUMMARY"
}

table() {
    echo
    echo "| PostgreSQL | step | result | seconds | tests |"
    echo "|---|---|---|---|---|"
    sort -s -n -k1,1 "$SUMMARY" | awk '{ tests = ""; for (i = 5; i <= NF; i++) tests = tests (i > 5 ? " " : "") $i
                                        printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, tests }'
}

trap cleanup EXIT
PG_VERSIONS="15 $OTHER_VERSIONS" bash scripts/setup.sh

step docs
bash scripts/check-docs.sh

step clippy
cargo fmt --all --check
cargo clippy --workspace --all-targets --features pg_test -- -D warnings

step pg_test
rm -rf "$PGRX_DATA"   # pgrx creates it as postgres, who cannot enter /root
counted cargo pgrx test pg15 --runas postgres --pgdata "$PGRX_DATA/data"

# PostgreSQL 16-18 build, package and test in the background while 15's
# suite goes on, one version after the other (each in its own cluster and
# port), with one build job: on two cores, more builds at once only slow
# each other down. A process group of its own, so that an early exit stops
# all of it.
if [ -n "$OTHER_VERSIONS" ]; then
    RESULTS="$SUMMARY" CARGO_BUILD_JOBS=1 setsid bash -c '
        status=0
        for version in $0; do
            bash scripts/test-version.sh "$version" >"/tmp/pg_otp-test-$version.log" 2>&1 || status=1
        done
        exit $status' "$OTHER_VERSIONS" &
    others=$!
fi

step try
# README.md's try command, without a terminal: it plays the example conversation.
bash scripts/try.sh </dev/null

step install
# docs/install.md's two ways, as written: from source, then the packages
# (every later step runs against pg_otp as the package installs it, with
# every release's scripts, so that upgrades are tested).
bash scripts/doc-block.sh run install-source
bash scripts/doc-block.sh run install-package
lintian --fail-on error,warning target/debian/*.deb

step debian_cluster
# The example conversation on Debian's own cluster, restarted with pg_otp
# preloaded, as a DBA has it after dpkg -i.
counted bash scripts/debian-cluster.sh

bash scripts/pg-cluster.sh start "$CLUSTER" "$PORT"

step pg_regress
if ! counted bash scripts/regress.sh "$CLUSTER" "$PORT"; then
    cat tests/pg_regress/regression.diffs >&2 || true
    exit 1
fi

export PG_OTP_TEST_HOST="$CLUSTER" PG_OTP_TEST_PORT="$PORT" PG_OTP_TEST_LOG="$CLUSTER/server.log" \
       PG_OTP_TEST_PGDATA="$CLUSTER/data"

step integration
counted cargo test -p pg_otp_integration -- --test-threads=1

step dispatcher
counted cargo test -p otp-dispatcher -- --test-threads=1

step systemd_unit
bash scripts/check-unit.sh target/debug/otp-dispatcher

step demo
cargo build -q -p otp-dispatcher
OTP_DISPATCHER_BIN="$PWD/target/debug/otp-dispatcher" counted cargo test -p otp-demo
step ""

# The other versions: their outcome, and the log of one that failed.
others_failed=false
if [ -n "$others" ]; then
    echo "==> waiting for PostgreSQL $OTHER_VERSIONS (logs: /tmp/pg_otp-test-N.log) ($(date -u +%H:%M:%S))"
    if ! wait "$others"; then
        others_failed=true
        for version in $OTHER_VERSIONS; do
            if grep -q "^$version [a-z_]* failed" "$SUMMARY"; then
                echo "==> PostgreSQL $version failed; its log:" >&2
                tail -n 200 "/tmp/pg_otp-test-$version.log" >&2
            fi
        done
    fi
    others=""
fi
table
$others_failed && exit 1

# One closing line with the totals of every runner above.
passed=$(awk -f scripts/tests-passed.awk "$RESULTS")
others_passed=$(awk '$1 != 15 && $3 == "passed" && $5 ~ /^[0-9]+$/ { total += $5 } END { print total + 0 }' "$SUMMARY")
echo
echo "pg_otp: $passed passed on PostgreSQL 15, $others_passed on ${OTHER_VERSIONS:-no other version}, 0 failed"
