#!/usr/bin/env bash
# What pg_otp's protections cost, a diagnosis for issue 14: pg_otp.sql on
# databases that each lack one protection, against pg_otp as installed and
# the PL/pgSQL contract (diy.sql), alternating round by round on one
# cluster, pgbench -M prepared at CLIENTS clients. Never a configuration to
# run: the variants alter pg_otp's own tables.
#   - checks: otp.outbox's and otp.challenge's CHECK constraints dropped
#     (PostgreSQL re-reads them from the catalog at every statement);
#   - events: no audit rows (a BEFORE INSERT trigger on otp.event returns
#     NULL), so neither the rows nor their index entries are written;
#   - both.
#   bash bench/pgbench/protections.sh [SECONDS_PER_RUN] [ROUNDS] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
source scripts/postgres.sh
CLUSTER=/tmp/pg_otp-protections
PORT=54339
SECONDS_EACH=${1:-10}
ROUNDS=${2:-3}
CLIENTS=${3:-4}

bash scripts/setup.sh
bash scripts/package.sh --extension-only target/bench-debian >/dev/null
bash scripts/install-package.sh "$PG_VERSION" target/bench-debian >/dev/null
trap 'bash scripts/pg-cluster.sh stop "$CLUSTER"' EXIT
bash scripts/pg-cluster.sh start "$CLUSTER" "$PORT" >/dev/null
psql_on() { "$PG_BIN/psql" -h "$CLUSTER" -p "$PORT" -U postgres -X -q -v ON_ERROR_STOP=1 -d "$@"; }

drop_checks="DO \$\$ DECLARE c record; BEGIN
    FOR c IN SELECT conrelid::regclass AS t, conname FROM pg_constraint
              WHERE contype = 'c' AND conrelid IN ('otp.outbox'::regclass, 'otp.challenge'::regclass) LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.t, c.conname);
    END LOOP; END \$\$;"
no_events="CREATE FUNCTION otp.skip_event() RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN RETURN NULL; END \$\$;
    CREATE TRIGGER skip_event BEFORE INSERT ON otp.event FOR EACH ROW EXECUTE FUNCTION otp.skip_event();"
declare -A variant=([full]="" [checks]="$drop_checks" [events]="$no_events" [both]="$drop_checks $no_events" [diy]="")
order="full checks events both diy"
for name in $order; do
    "$PG_BIN/createdb" -h "$CLUSTER" -p "$PORT" -U postgres "b_$name"
    psql_on "b_$name" -f bench/pgbench/setup.sql >/dev/null
    [ -n "${variant[$name]}" ] && psql_on "b_$name" -c "${variant[$name]}" >/dev/null
done
psql_on b_diy -f bench/pgbench/diy_setup.sql >/dev/null
psql_on b_diy -c "ALTER DATABASE b_diy SET diy.secret = '$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')'"

tps() { # NAME
    local script=pg_otp
    [ "$1" = diy ] && script=diy
    "$PG_BIN/pgbench" -h "$CLUSTER" -p "$PORT" -U postgres -n -M prepared -c "$CLIENTS" -j "$CLIENTS" \
        -T "$SECONDS_EACH" -f "bench/pgbench/$script.sql" "b_$1" 2>/dev/null | awk '/^tps = / { printf "%d", $3 }'
}
median() { tr -s ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A runs
for name in $order; do tps "$name" >/dev/null; done # warm: plans, caches, statistics
for round in $(seq "$ROUNDS"); do
    for name in $order; do runs[$name]="${runs[$name]:-} $(tps "$name")"; done
    echo "round $round of $ROUNDS done" >&2
done
echo "machine: $(nproc) cores, $("$PG_BIN/postgres" --version); $CLIENTS clients, ${SECONDS_EACH} s per run, median of $ROUNDS rounds"
echo
full=$(echo "${runs[full]}" | median)
echo "| pg_otp | authentications/s | against pg_otp as installed | runs |"
echo "|---|---|---|---|"
for name in $order; do
    m=$(echo "${runs[$name]}" | median)
    echo "| $name | $m | $(awk -v a="$m" -v b="$full" 'BEGIN { printf "%.2f", a / b }') |${runs[$name]} |"
done
