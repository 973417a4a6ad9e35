#!/usr/bin/env bash
# One full authentication (issue, the dispatcher's claim and report, verify,
# touch: five calls, five commits) through pg_otp, against the same contract
# written by hand in PL/pgSQL with pgcrypto (diy_setup.sql, diy.sql), the
# floor of plain SQL doing only the essential lookups and row writes
# (plain_minimal.sql), and plain SQL doing pg_otp's own writes statement by
# statement (plain.sql). pgbench -M prepared at 1, 4 and 16 clients; every
# set-up runs once per round, in turn, on one cluster (fsync on, release
# build); the table gives the median of the rounds. Then each call's p50
# and p99 at 16 clients, pg_otp against PL/pgSQL (bench/src/calls.rs).
# pg_otp runs twice: in database bench, which the "pg_otp wake" worker
# serves (otp.purge_database), and in bench_direct, where each issuing
# transaction sends its own NOTIFY (as in any database the worker does not
# serve). Prints Markdown rows.
#   bash bench/pgbench/run.sh [SECONDS_PER_RUN] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
source scripts/postgres.sh
CLUSTER=/tmp/pg_otp-pgbench
PORT=54332
SECONDS_EACH=${1:-10}
ROUNDS=${2:-3}

bash scripts/setup.sh
bash scripts/package.sh --extension-only target/bench-debian >/dev/null
cargo build -q --release -p pg_otp_bench --bin calls-bench
bash scripts/install-package.sh "$PG_VERSION" target/bench-debian >/dev/null
trap 'bash scripts/pg-cluster.sh stop "$CLUSTER"' EXIT
# The workers serve database bench, and purge at their default interval.
OTP_WORKER_DATABASE=bench OTP_PURGE_INTERVAL=600 bash scripts/pg-cluster.sh start "$CLUSTER" "$PORT" >/dev/null
psql_bench() { "$PG_BIN/psql" -h "$CLUSTER" -p "$PORT" -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
for db in bench bench_direct; do
    "$PG_BIN/createdb" -h "$CLUSTER" -p "$PORT" -U postgres "$db"
    psql_bench -d "$db" -f bench/pgbench/setup.sql >/dev/null
done
psql_bench -d bench -f bench/pgbench/diy_setup.sql >/dev/null
psql_bench -d bench -c "ALTER DATABASE bench SET diy.secret = '$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')'"
# The wake worker retries every 5 s until database bench exists.
waking_bench() {
    [ "$(psql_bench -d bench -tAc "SELECT count(*) FROM pg_stat_activity
                                     WHERE backend_type = 'pg_otp wake' AND datname = 'bench'")" = 1 ]
}
for _ in $(seq 120); do waking_bench && break; sleep 0.5; done
waking_bench || { echo "run.sh: the pg_otp wake worker did not start in database bench" >&2; exit 1; }

tps() { # SCRIPT CLIENTS [DATABASE]
    "$PG_BIN/pgbench" -h "$CLUSTER" -p "$PORT" -U postgres -n -M prepared -c "$2" -j "$2" -T "$SECONDS_EACH" \
        -f "bench/pgbench/$1.sql" "${3:-bench}" 2>/dev/null | awk '/^tps = / { printf "%d", $3 }'
}
median() { tr -s ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

scripts="pg_otp diy plain_minimal plain"
declare -A runs
for round in $(seq "$ROUNDS"); do
    for clients in 1 4 16; do
        for script in $scripts; do
            runs[$script/$clients]="${runs[$script/$clients]:-} $(tps "$script" "$clients")"
        done
        runs[direct/$clients]="${runs[direct/$clients]:-} $(tps pg_otp "$clients" bench_direct)"
    done
    echo "round $round of $ROUNDS done" >&2
done

echo "machine: $(nproc) cores, $(. /etc/os-release; echo "$PRETTY_NAME"), $("$PG_BIN/postgres" --version); ${SECONDS_EACH} s per run, median of $ROUNDS rounds"
echo
echo "| clients | pg_otp | PL/pgSQL + pgcrypto | pg_otp / PL/pgSQL | floor (plain SQL, essential writes) | pg_otp / floor | plain SQL, pg_otp's writes | pg_otp / that | pg_otp, each issue notifying | its / PL/pgSQL |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for clients in 1 4 16; do
    otp=$(echo "${runs[pg_otp/$clients]}" | median)
    diy=$(echo "${runs[diy/$clients]}" | median)
    floor=$(echo "${runs[plain_minimal/$clients]}" | median)
    plain=$(echo "${runs[plain/$clients]}" | median)
    direct=$(echo "${runs[direct/$clients]}" | median)
    echo "| $clients | $otp | $diy | $(ratio "$otp" "$diy") | $floor | $(ratio "$otp" "$floor") | $plain | $(ratio "$otp" "$plain") | $direct | $(ratio "$direct" "$diy") |"
done
echo
echo "every run (authentications/s):"
for key in "${!runs[@]}"; do echo "  $key:${runs[$key]}"; done | sort
echo
# Each call's latency at 16 clients (pgbench cannot give per-statement percentiles).
target/release/calls-bench --database "host=$CLUSTER port=$PORT user=postgres dbname=bench" \
    --clients 16 --seconds "$SECONDS_EACH" --rounds 2
