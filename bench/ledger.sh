#!/usr/bin/env bash
# otp_verify of this version (which counts every attempt in the attempt
# ledger first) against 0.2.0 (which did not), side by side in one run:
# release builds of both, a fresh cluster per measurement, the versions
# alternating for ROUNDS rounds. Prints Markdown rows for BENCHMARKS.md.
#   bash bench/ledger.sh [ROUNDS] [CALLS]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

ROUNDS=${1:-3}
CALLS=${2:-2000}
PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config
WORK=/tmp/pg_otp-ledger-bench
CLUSTER=$WORK/cluster
PORT=54334
LIBDIR=$("$PG_CONFIG" --pkglibdir)

bash scripts/setup.sh
mkdir -p "$WORK"

# 0.2.0's library, built from its tag (once; kept in $WORK).
if [ ! -f "$WORK/pg_otp-0.2.0.so" ]; then
    rm -rf "$WORK/v0.2.0" && mkdir -p "$WORK/v0.2.0"
    git archive v0.2.0 | tar -x -C "$WORK/v0.2.0"
    (cd "$WORK/v0.2.0" && CARGO_TARGET_DIR="$WORK/target" \
        cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null)
    cp "$LIBDIR/pg_otp.so" "$WORK/pg_otp-0.2.0.so"
fi
# This version's library, scripts and control file (installed last, so the
# control file is this version's), and the released install scripts.
cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null
cp "$LIBDIR/pg_otp.so" "$WORK/pg_otp-current.so"
cp sql/released/pg_otp--*.sql "$("$PG_CONFIG" --sharedir)/extension/"
cargo build --release -q -p pg_otp_bench --bin verify-bench

restore() {
    bash scripts/pg-cluster.sh stop "$CLUSTER"
    cp "$WORK/pg_otp-current.so" "$LIBDIR/pg_otp.so"
}
trap restore EXIT
: >"$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
    for build in 0.2.0 current; do
        cp "$WORK/pg_otp-$build.so" "$LIBDIR/pg_otp.so"
        bash scripts/pg-cluster.sh start "$CLUSTER" "$PORT" >/dev/null
        version=""
        [ "$build" = 0.2.0 ] && version="VERSION '0.2.0'"
        "$PG_BIN/psql" -qX -h "$CLUSTER" -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE bench"
        "$PG_BIN/psql" -qX -h "$CLUSTER" -p "$PORT" -U postgres -d bench -c "CREATE EXTENSION pg_otp $version"
        target/release/verify-bench --database-url "host=$CLUSTER port=$PORT user=postgres dbname=bench" \
            --label "$build" --calls "$CALLS" | tee -a "$WORK/results"
        bash scripts/pg-cluster.sh stop "$CLUSTER"
    done
done

echo
echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $("$PG_BIN/postgres" --version); $ROUNDS rounds of $CALLS calls"
echo
echo "| build | otp_verify wrong code, p50 | p99 | right code, p50 | p99 |"
echo "|---|---|---|---|---|"
awk '{ printf "| %s | %.3f ms | %.3f ms | %.3f ms | %.3f ms |\n", $1, $2, $3, $4, $5 }' "$WORK/results"
# Medians over the rounds, and the ratio of this version to 0.2.0.
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
median = {b: [statistics.median(float(r[i]) for r in rows if r[0] == b) for i in (1, 3)]
          for b in ("0.2.0", "current")}
for what, i in (("wrong code", 0), ("right code", 1)):
    old, new = median["0.2.0"][i], median["current"][i]
    print(f"| median p50, {what} | 0.2.0 {old:.3f} ms | current {new:.3f} ms | ratio {new / old:.3f} | |")
PY
