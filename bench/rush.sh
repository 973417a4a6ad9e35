#!/usr/bin/env bash
# The morning rush (bench/src/rush.rs): 5,000 people ask for a code within a
# minute and one WhatsApp number sends at its default 80 messages/s; prints
# Markdown rows for BENCHMARKS.md.
#   bash bench/rush.sh [--people N]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

source scripts/postgres.sh
CLUSTER=/tmp/pg_otp-rush-bench
PORT=54337

bash scripts/setup.sh
cargo pgrx install --release --pg-config "$PG_BIN/pg_config" >/dev/null
cargo build --release -p otp-dispatcher -p pg_otp_bench
trap 'bash scripts/pg-cluster.sh stop "$CLUSTER"' EXIT
bash scripts/pg-cluster.sh start "$CLUSTER" "$PORT" >/dev/null

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(. /etc/os-release; echo "$PRETTY_NAME"), $("$PG_BIN/postgres" --version)"
PG_OTP_TEST_HOST="$CLUSTER" PG_OTP_TEST_PORT="$PORT" \
    target/release/rush-bench --dispatcher target/release/otp-dispatcher "$@"
