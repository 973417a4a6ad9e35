#!/usr/bin/env bash
# A throwaway PostgreSQL cluster (PG_VERSION, default 15) for trying and testing pg_otp.
#
#   pg-cluster.sh start DIR PORT   fresh cluster in DIR, socket in DIR, no TCP
#   pg-cluster.sh stop DIR
#
# PostgreSQL refuses to run as root, so the cluster runs as the postgres user;
# DIR must be somewhere postgres can enter (use /tmp). The cluster preloads
# pg_otp and gets a random otp.secret_key; its log is DIR/server.log. Its
# background workers (purge, wake) serve database OTP_WORKER_DATABASE
# (default postgres) and purge every OTP_PURGE_INTERVAL seconds (default 1).
set -euo pipefail
source "$(dirname "$0")/postgres.sh"
BIN=$PG_BIN

command=${1:?usage: pg-cluster.sh start DIR PORT | stop DIR}
dir=${2:?usage: pg-cluster.sh start DIR PORT | stop DIR}

as_postgres() { runuser -u postgres -- "$@"; }

case "$command" in
start)
    port=${3:?usage: pg-cluster.sh start DIR PORT}
    "$0" stop "$dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    chown postgres: "$dir"
    as_postgres "$BIN/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
    secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    cat >>"$dir/data/postgresql.conf" <<CONF

# --- pg_otp throwaway cluster ---
port = $port
listen_addresses = ''
unix_socket_directories = '$dir'
shared_preload_libraries = 'pg_otp'
otp.secret_key = '$secret'
max_connections = 200
# two-phase commit on, so that tests can try PREPARE TRANSACTION
max_prepared_transactions = 10
# the background workers: purge (if pg_otp is installed there) and wake
otp.purge_database = '${OTP_WORKER_DATABASE:-postgres}'
otp.purge_interval = ${OTP_PURGE_INTERVAL:-1}
log_line_prefix = '%m [%p] %q%u@%d '
CONF
    # RUST_BACKTRACE would make pgrx attach backtraces to the DETAIL of ERRORs.
    env -u RUST_BACKTRACE runuser -u postgres -- "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
    echo "PostgreSQL $PG_VERSION running: host=$dir port=$port user=postgres (log: $dir/server.log)"
    ;;
stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_postgres "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    fi
    ;;
*)
    echo "usage: pg-cluster.sh start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
