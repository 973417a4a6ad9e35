#!/usr/bin/env bash
# Shows pg_otp working. On a fresh Debian 12 machine, as root, it installs what
# it needs, builds pg_otp, otp-dispatcher and otp-demo, starts a throwaway
# PostgreSQL 15 cluster with a sample hr.employees table and a "payroll"
# agent, starts otp-dispatcher with the console transport (the "phone"), and
# opens a chat with the payroll agent. Without a terminal it plays the
# example conversation from demo/conversation.txt. Then it plays the same
# conversation from the SQL side (tests/pg_regress/sql/conversation.sql).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

source scripts/postgres.sh
CLUSTER=/tmp/pg_otp-try
PORT=54330
DB=payroll_demo

bash scripts/setup.sh
echo "==> building pg_otp, otp-dispatcher and otp-demo"
cargo pgrx install --pg-config "$PG_BIN/pg_config" >/dev/null
cargo build -q -p otp-dispatcher -p otp-demo

dispatcher=""
cleanup() {
    [ -n "$dispatcher" ] && kill "$dispatcher" 2>/dev/null && wait "$dispatcher" 2>/dev/null
    bash scripts/pg-cluster.sh stop "$CLUSTER"
}
trap cleanup EXIT
bash scripts/pg-cluster.sh start "$CLUSTER" "$PORT"
psql_demo() { "$PG_BIN/psql" -h "$CLUSTER" -p "$PORT" -U postgres -d "$DB" -X -q -v ON_ERROR_STOP=1 "$@"; }
"$PG_BIN/createdb" -h "$CLUSTER" -p "$PORT" -U postgres "$DB"
# hr.employees, the payroll agent, and the roles chat_app (otp_app) and otp_sender (otp_dispatcher)
psql_demo -f tests/pg_regress/sql/setup.sql >/dev/null
# For the demo: a short idle timeout you can wait out, no resend cooldown.
psql_demo -c "SELECT otp_configure(agent => 'payroll', source => 'hr.employees', id_column => 'employee_no',
                                   phone_column => 'whatsapp', email_column => 'email',
                                   idle_timeout => '2 minutes', resend_cooldown => '0')" >/dev/null

target/debug/otp-dispatcher --database-url "host=$CLUSTER port=$PORT user=otp_sender dbname=$DB" \
    --console --poll-interval-ms 500 >"$CLUSTER/phone.log" 2>"$CLUSTER/dispatcher.log" &
dispatcher=$!

demo=(target/debug/otp-demo --database-url "host=$CLUSTER port=$PORT user=chat_app dbname=$DB"
      --phone "$CLUSTER/phone.log")
echo
if [ -t 0 ] && [ -t 1 ]; then
    echo "==> Chat with the payroll agent. Employees: 4721 (WhatsApp), 5108 (email), 6230 (no contact)."
    echo "    The code arrives on the simulated phone below the agent's reply. Ctrl-D ends the chat."
    echo
    "${demo[@]}"
else
    echo "==> The example conversation (demo/conversation.txt)"
    echo
    "${demo[@]}" --script demo/conversation.txt
fi

# The SQL side plays the dispatcher itself: stop the real one first.
kill "$dispatcher" && wait "$dispatcher" 2>/dev/null || true
dispatcher=""
echo
echo "==> The same conversation from the SQL side (tests/pg_regress/sql/conversation.sql)"
psql_demo -a -P pager=off -f tests/pg_regress/sql/conversation.sql
echo
echo "Done; the throwaway cluster is stopped again. For a cluster of your own to explore:"
echo "  bash scripts/pg-cluster.sh start /tmp/pg_otp-play 54340 && psql -h /tmp/pg_otp-play -p 54340 -U postgres"
