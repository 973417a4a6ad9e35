#!/usr/bin/env bash
# pgbench: one full authentication through pg_otp against the same work in
# plain SQL (plain.sql), and against a plain baseline with fewer writes
# (plain_minimal.sql), at 1, 4 and 16 clients, in the same run. Prints
# Markdown rows.
#   bash bench/pgbench/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
source scripts/postgres.sh
CLUSTER=/tmp/pg_otp-pgbench
PORT=54332
SECONDS_EACH=${1:-20}

bash scripts/setup.sh
cargo pgrx install --release --pg-config "$PG_BIN/pg_config" >/dev/null
trap 'bash scripts/pg-cluster.sh stop "$CLUSTER"' EXIT
bash scripts/pg-cluster.sh start "$CLUSTER" "$PORT" >/dev/null
"$PG_BIN/createdb" -h "$CLUSTER" -p "$PORT" -U postgres bench
"$PG_BIN/psql" -h "$CLUSTER" -p "$PORT" -U postgres -d bench -X -q -v ON_ERROR_STOP=1 -f bench/pgbench/setup.sql >/dev/null

tps() {
    "$PG_BIN/pgbench" -h "$CLUSTER" -p "$PORT" -U postgres -n -M prepared -c "$2" -j "$2" -T "$SECONDS_EACH" \
        -f "bench/pgbench/$1.sql" bench 2>/dev/null | awk '/^tps = / {print $3}'
}

echo "machine: $(nproc) cores, $(. /etc/os-release; echo "$PRETTY_NAME"), $("$PG_BIN/postgres" --version); ${SECONDS_EACH} s per run"
echo "| clients | pg_otp (authentications/s) | plain SQL, same writes | ratio | plain SQL, minimal writes | ratio |"
echo "|---|---|---|---|---|---|"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
for clients in 1 4 16; do
    otp=$(tps pg_otp "$clients")
    plain=$(tps plain "$clients")
    minimal=$(tps plain_minimal "$clients")
    echo "| $clients | $otp | $plain | $(ratio "$otp" "$plain") | $minimal | $(ratio "$otp" "$minimal") |"
done
