#!/usr/bin/env bash
# The example conversation on Debian's own cluster (15/main, which the
# postgresql-15 package created), as a DBA gets it after `dpkg -i` of the
# extension's package: pg_otp preloaded and given a secret in conf.d, the
# cluster restarted with pg_ctlcluster, then pg_regress's setup and
# conversation tests against it. Afterwards the cluster is stopped again,
# without the configuration, the database or the roles the test made. A
# cluster that is running is somebody's: it is left alone, and the script
# says so. As root; used by test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh

cluster="$PG_VERSION main"
conf=/etc/postgresql/$PG_VERSION/main/conf.d/pg_otp-ci.conf
socket=/var/run/postgresql
read -r port status < <(pg_lsclusters -h | awk -v v="$PG_VERSION" '$1 == v && $2 == "main" { print $3, $4 }') || true
if [ -z "${port:-}" ]; then
    echo "debian-cluster.sh: no cluster $cluster (pg_createcluster $cluster makes one)" >&2
    exit 1
fi
if [ "$status" = online ]; then
    echo "debian-cluster.sh: cluster $cluster is running; not restarting somebody's database (skipped)"
    exit 0
fi
work=$(mktemp -d)
existing=" "

as_postgres() { runuser -u postgres -- "$@"; }
psql_debian() { as_postgres "$PG_BIN/psql" -h "$socket" -p "$port" -X -q -v ON_ERROR_STOP=1 "$@"; }
cleanup() {
    if [ -e "$conf" ]; then
        psql_debian -d postgres -c "DROP DATABASE IF EXISTS pg_otp_debian" 2>/dev/null || true
        # only the roles this test made
        for role in chat_app otp_sender otp_admin otp_app otp_dispatcher otp_owner; do
            case "$existing" in *" $role "*) continue ;; esac
            psql_debian -d postgres -c "DROP ROLE IF EXISTS $role" 2>/dev/null || true
        done
        rm -f "$conf"
        pg_ctlcluster $cluster stop || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$conf" <<CONF
# pg_otp, for scripts/debian-cluster.sh (removed when it ends)
shared_preload_libraries = 'pg_otp'
otp.secret_key = '$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')'
CONF
chown postgres: "$conf"
chmod 600 "$conf"
# RUST_BACKTRACE would make pgrx attach backtraces to the DETAIL of ERRORs.
env -u RUST_BACKTRACE pg_ctlcluster $cluster start
existing=" $(psql_debian -d postgres -At -c "SELECT string_agg(rolname, ' ') FROM pg_roles") "

cp -r tests/pg_regress/sql tests/pg_regress/expected "$work/"
chown -R postgres: "$work"
as_postgres "$(pg_regress_bin)" \
    --bindir="$PG_BIN" --host="$socket" --port="$port" --user=postgres \
    --dbname=pg_otp_debian --inputdir="$work" --outputdir="$work" \
    setup conversation || {
    cat "$work/regression.diffs" >&2
    exit 1
}
