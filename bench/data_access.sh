#!/usr/bin/env bash
# Runs the data-access benchmark (bench/src/data_access.rs): the row-level
# security policy on otp_subject() against a literal on a 1,000,000-row
# table, and session_use against session_touch with 1,000,000 sessions of
# history. Prints Markdown rows for BENCHMARKS.md.
#   bash bench/data_access.sh [--rows N] [--calls N]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

source scripts/postgres.sh
CLUSTER=/tmp/pg_otp-data-access-bench
PORT=54335

bash scripts/setup.sh
cargo pgrx install --release --pg-config "$PG_BIN/pg_config" >/dev/null
cargo build --release -q -p pg_otp_bench --bin data-access-bench
trap 'bash scripts/pg-cluster.sh stop "$CLUSTER"' EXIT
bash scripts/pg-cluster.sh start "$CLUSTER" "$PORT" >/dev/null

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(. /etc/os-release; echo "$PRETTY_NAME"), $("$PG_BIN/postgres" --version)"
PG_OTP_TEST_HOST="$CLUSTER" PG_OTP_TEST_PORT="$PORT" target/release/data-access-bench "$@"
