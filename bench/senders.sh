#!/usr/bin/env bash
# Per-agent senders benchmark (bench/src/senders.rs): messages/s with two
# WhatsApp senders and per-agent templates (--config) against 0.2.0's single
# sender, 0.3.0's, and this build's single sender, in one run. Builds the
# 0.2.0 and 0.3.0 dispatchers from their tags in worktrees of their own.
# Prints Markdown rows for BENCHMARKS.md.
#   bash bench/senders.sh [--messages N] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

source scripts/postgres.sh
CLUSTER=/tmp/pg_otp-senders-bench
PORT=54334
OLD=/tmp/pg_otp-v0.2.0
PREVIOUS=/tmp/pg_otp-v0.3.0

bash scripts/setup.sh
cargo pgrx install --release --pg-config "$PG_BIN/pg_config" >/dev/null
cp sql/released/pg_otp--*.sql "$("$PG_BIN/pg_config" --sharedir)/extension/"
cargo build --release -p otp-dispatcher -p pg_otp_bench
# Earlier releases' dispatchers, each built from its tag in a worktree.
for release in "$OLD:v0.2.0" "$PREVIOUS:v0.3.0"; do
    dir=${release%%:*} tag=${release##*:}
    if [ ! -x "$dir-target/release/otp-dispatcher" ]; then
        rm -rf "$dir"
        git worktree prune
        git worktree add --detach "$dir" "$tag"
        (cd "$dir" && CARGO_TARGET_DIR="$dir-target" cargo build --release -p otp-dispatcher)
    fi
done
trap 'bash scripts/pg-cluster.sh stop "$CLUSTER"' EXIT
bash scripts/pg-cluster.sh start "$CLUSTER" "$PORT" >/dev/null

echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(. /etc/os-release; echo "$PRETTY_NAME"), $("$PG_BIN/postgres" --version)"
PG_OTP_TEST_HOST="$CLUSTER" PG_OTP_TEST_PORT="$PORT" \
    target/release/senders-bench --dispatcher target/release/otp-dispatcher \
    --baseline-dispatcher "$OLD-target/release/otp-dispatcher" \
    --previous-dispatcher "$PREVIOUS-target/release/otp-dispatcher" "$@"
