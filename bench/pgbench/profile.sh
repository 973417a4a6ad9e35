#!/usr/bin/env bash
# Where one authentication's time goes in pg_otp (issue 14): pgbench runs
# bench/pgbench/pg_otp.sql at CLIENTS clients for SECONDS on a cluster with
# pg_stat_statements tracking every statement, nested ones included (the
# statements pg_otp's functions run through SPI); then again under `perf
# record` of every server process. Prints the statements by total time and
# the hottest functions of the server processes.
#   bash bench/pgbench/profile.sh [SECONDS] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
source scripts/postgres.sh
CLUSTER=/tmp/pg_otp-profile
PORT=54336
SECONDS_EACH=${1:-15}
CLIENTS=${2:-4}

bash scripts/setup.sh
bash scripts/package.sh --extension-only target/bench-debian >/dev/null
bash scripts/install-package.sh "$PG_VERSION" target/bench-debian >/dev/null
trap 'bash scripts/pg-cluster.sh stop "$CLUSTER"' EXIT
# The workers serve database bench (the wake worker retries until it exists).
OTP_WORKER_DATABASE=bench OTP_PURGE_INTERVAL=600 bash scripts/pg-cluster.sh start "$CLUSTER" "$PORT" >/dev/null
cat >>"$CLUSTER/data/postgresql.conf" <<CONF
shared_preload_libraries = 'pg_otp, pg_stat_statements'
pg_stat_statements.track = all
pg_stat_statements.max = 10000
CONF
env -u RUST_BACKTRACE runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$CLUSTER/data" -l "$CLUSTER/server.log" -w restart >/dev/null
psql_bench() { "$PG_BIN/psql" -h "$CLUSTER" -p "$PORT" -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
"$PG_BIN/createdb" -h "$CLUSTER" -p "$PORT" -U postgres bench
psql_bench -d bench -f bench/pgbench/setup.sql >/dev/null
psql_bench -d bench -c "CREATE EXTENSION pg_stat_statements"
run() {
    "$PG_BIN/pgbench" -h "$CLUSTER" -p "$PORT" -U postgres -n -M prepared -c "$CLIENTS" -j "$CLIENTS" \
        -T "$SECONDS_EACH" -f bench/pgbench/pg_otp.sql bench 2>/dev/null | awk '/^tps = / { print "tps: " $3 }'
}

run >/dev/null # warm: plans, caches, statistics
psql_bench -d bench -c "SELECT pg_stat_statements_reset()" >/dev/null
run
echo
echo "Statements by total time (toplevel: the five calls; nested: what they run inside):"
psql_bench -d bench -P pager=off -c "
    SELECT CASE WHEN toplevel THEN 'call' ELSE 'nested' END AS level, calls,
           round(total_exec_time::numeric, 0) AS total_ms,
           round(mean_exec_time::numeric * 1000, 0) AS mean_us,
           round((100 * total_exec_time / sum(total_exec_time) FILTER (WHERE toplevel) OVER ())::numeric, 1) AS pct_of_calls,
           shared_blks_hit + shared_blks_read AS blocks, wal_bytes,
           left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS query
      FROM pg_stat_statements
     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'bench')
     ORDER BY toplevel DESC, total_exec_time DESC
     LIMIT 40"

if command -v perf >/dev/null; then
    echo
    echo "Server processes under perf (cpu-clock), hottest symbols:"
    perf record -q -e cpu-clock -F 999 -g -a -o "$CLUSTER/perf.data" -- sleep "$SECONDS_EACH" 2>/dev/null &
    recorder=$!
    run
    wait "$recorder" || true
    perf report -i "$CLUSTER/perf.data" --comms postgres --no-children --sort dso,symbol --stdio 2>/dev/null |
        grep -E '^ +[0-9]' | head -40
fi
