#!/usr/bin/env bash
# Runs the history benchmark (bench/src/history.rs): otp_issue and otp_verify
# latency on an empty database and with a million rows of history, and the
# timing of decoys. Prints Markdown rows for BENCHMARKS.md.
#   bash bench/history.sh [--rows N] [--calls N]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

source scripts/postgres.sh
CLUSTER=/tmp/pg_otp-history-bench
PORT=54333

bash scripts/setup.sh
cargo pgrx install --release --pg-config "$PG_BIN/pg_config" >/dev/null
cargo build --release -p pg_otp_bench
trap 'bash scripts/pg-cluster.sh stop "$CLUSTER"' EXIT
bash scripts/pg-cluster.sh start "$CLUSTER" "$PORT" >/dev/null

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(. /etc/os-release; echo "$PRETTY_NAME"), $("$PG_BIN/postgres" --version)"
PG_OTP_TEST_HOST="$CLUSTER" PG_OTP_TEST_PORT="$PORT" target/release/history-bench "$@"
