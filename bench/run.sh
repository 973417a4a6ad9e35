#!/usr/bin/env bash
# Runs the delivery benchmark on this machine and prints Markdown rows for
# BENCHMARKS.md. Not part of the tests: it measures, it does not judge.
#   bash bench/run.sh [--codes N] [--messages N]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

source scripts/postgres.sh
CLUSTER=/tmp/pg_otp-bench
PORT=54331

bash scripts/setup.sh
cargo pgrx install --release --pg-config "$PG_BIN/pg_config" >/dev/null
cargo build --release -p otp-dispatcher -p pg_otp_bench
trap 'bash scripts/pg-cluster.sh stop "$CLUSTER"' EXIT
bash scripts/pg-cluster.sh start "$CLUSTER" "$PORT"

echo
echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(. /etc/os-release; echo "$PRETTY_NAME"), $("$PG_BIN/postgres" --version)"
PG_OTP_TEST_HOST="$CLUSTER" PG_OTP_TEST_PORT="$PORT" \
    target/release/delivery-bench --dispatcher target/release/otp-dispatcher "$@"
