#!/usr/bin/env bash
# Runs every test of pg_otp. On a fresh Debian 12 machine, as root, it first
# installs what it needs (scripts/setup.sh). Steps:
#   1. the documentation's links, rustfmt and clippy
#   2. #[pg_test] unit tests inside PostgreSQL (cargo pgrx test)
#   3. the Debian packages built, checked with lintian, the extension's
#      installed with dpkg; pg_regress SQL tests against a throwaway cluster
#      with it
#   4. integration tests: many real connections against the same cluster,
#      attacks, a crash under load, key rotation, a million rows of history,
#      the upgrade from the last release
#   5. otp-dispatcher tests: the binary against the same cluster, a fake
#      WhatsApp Cloud API and a real SMTP server, all on loopback; its
#      systemd unit checked with systemd-analyze
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

source scripts/postgres.sh
PGRX_DATA=/tmp/pg_otp-pgrx
CLUSTER=/tmp/pg_otp-cluster
PORT=54329

step() { printf '\n==> %s\n' "$*"; }

# Every runner's output also goes to this log, for the closing total.
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT
counted() { "$@" 2>&1 | tee -a "$RESULTS"; }

bash scripts/setup.sh

step "documentation (links, front door size)"
bash scripts/check-docs.sh

step "rustfmt and clippy"
cargo fmt --all --check
cargo clippy --workspace --all-targets --features pg_test -- -D warnings

step "pgrx tests (#[pg_test] and unit tests)"
rm -rf "$PGRX_DATA"   # pgrx creates it as postgres, who cannot enter /root
counted cargo pgrx test pg15 --runas postgres --pgdata "$PGRX_DATA/data"

step "packages: build, lintian, install the extension's with dpkg"
# Everything after this runs against pg_otp as a DBA installs it: from the
# package (with every release's scripts, so that upgrades are tested).
bash scripts/package.sh target/debian
lintian --fail-on error,warning target/debian/*.deb
dpkg -i "target/debian/postgresql-$PG_VERSION-pg-otp_"*"_amd64.deb"

step "throwaway cluster"
trap 'bash scripts/pg-cluster.sh stop "$CLUSTER"; rm -f "$RESULTS"' EXIT
bash scripts/pg-cluster.sh start "$CLUSTER" "$PORT"

step "pg_regress"
if ! counted bash scripts/regress.sh "$CLUSTER" "$PORT"; then
    cat tests/pg_regress/regression.diffs >&2 || true
    exit 1
fi

export PG_OTP_TEST_HOST="$CLUSTER" PG_OTP_TEST_PORT="$PORT" PG_OTP_TEST_LOG="$CLUSTER/server.log" \
       PG_OTP_TEST_PGDATA="$CLUSTER/data"

step "integration tests (real parallel connections)"
counted cargo test -p pg_otp_integration -- --test-threads=1

step "otp-dispatcher tests (fake WhatsApp API, real SMTP server, database restart)"
counted cargo test -p otp-dispatcher -- --test-threads=1

step "the dispatcher's systemd unit (systemd-analyze verify and security)"
bash scripts/check-unit.sh target/debug/otp-dispatcher

step "otp-demo: the example conversation through the real dispatcher"
cargo build -q -p otp-dispatcher
OTP_DISPATCHER_BIN="$PWD/target/debug/otp-dispatcher" counted cargo test -p otp-demo

# One closing line with the totals of every runner above.
# cargo: "test result: ok. 51 passed; ..."   pg_regress: " All 5 tests passed. "
passed=$(awk '/^test result: ok\./ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^passed/) total += $i }
              /All [0-9]+ tests passed/ { total += $2 }
              END { print total + 0 }' "$RESULTS")
echo
echo "pg_otp: $passed passed, 0 failed"
