#!/usr/bin/env bash
# Shows pg_otp working: on a fresh Debian 12 machine, as root, it installs what
# it needs, builds and installs the extension, starts a throwaway PostgreSQL 15
# cluster and plays the example conversation of the README from the SQL side.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

PG_BIN=/usr/lib/postgresql/15/bin
CLUSTER=/tmp/pg_otp-try
PORT=54330

bash scripts/setup.sh
echo "==> building and installing pg_otp"
cargo pgrx install --pg-config "$PG_BIN/pg_config" >/dev/null
trap 'bash scripts/pg-cluster.sh stop "$CLUSTER"' EXIT
bash scripts/pg-cluster.sh start "$CLUSTER" "$PORT"
"$PG_BIN/createdb" -h "$CLUSTER" -p "$PORT" -U postgres payroll_demo
for script in setup conversation; do
    echo
    echo "==> tests/pg_regress/sql/$script.sql"
    "$PG_BIN/psql" -h "$CLUSTER" -p "$PORT" -U postgres -d payroll_demo \
        -X -q -v ON_ERROR_STOP=1 -a -P pager=off -f "tests/pg_regress/sql/$script.sql"
done
echo
echo "Done; the throwaway cluster is stopped again. For a cluster of your own to explore:"
echo "  bash scripts/pg-cluster.sh start /tmp/pg_otp-play 54340 && psql -h /tmp/pg_otp-play -p 54340 -U postgres"
