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
source scripts/postgres.sh
PG_CONFIG=$PG_BIN/pg_config
WORK=/tmp/pg_otp-ledger-bench
CLUSTER=$WORK/cluster
PORT=54334
LIBDIR=$("$PG_CONFIG" --pkglibdir)

bash scripts/setup.sh
mkdir -p "$WORK"

# Both libraries built as packages (nothing installed yet): 0.2.0's from its
# tag, once, kept in $WORK; this version's from the working tree.
if [ ! -f "$WORK/pg_otp-0.2.0.so" ]; then
    rm -rf "$WORK/v0.2.0" && mkdir -p "$WORK/v0.2.0"
    git archive v0.2.0 | tar -x -C "$WORK/v0.2.0"
    (cd "$WORK/v0.2.0" && CARGO_TARGET_DIR="$WORK/target" \
        cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$WORK/package-0.2.0" >/dev/null)
    cp "$WORK/package-0.2.0$LIBDIR/pg_otp.so" "$WORK/pg_otp-0.2.0.so"
fi
cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$WORK/package-current" >/dev/null
cp "$WORK/package-current$LIBDIR/pg_otp.so" "$WORK/pg_otp-current.so"
# This version's scripts and control file, and the released install scripts.
cp "$WORK/package-current$("$PG_CONFIG" --sharedir)"/extension/pg_otp* "$("$PG_CONFIG" --sharedir)/extension/"
cp sql/released/pg_otp--*.sql "$("$PG_CONFIG" --sharedir)/extension/"
cargo build --release -q -p pg_otp_bench --bin verify-bench

# Swaps the library by renaming a copy over it: clusters still running
# keep the file they mapped.
install_library() {
    cp "$1" "$LIBDIR/.pg_otp.so.new"
    mv "$LIBDIR/.pg_otp.so.new" "$LIBDIR/pg_otp.so"
}

restore() {
    bash scripts/pg-cluster.sh stop "$CLUSTER"
    install_library "$WORK/pg_otp-current.so"
}
trap restore EXIT
: >"$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
    for build in 0.2.0 current; do
        install_library "$WORK/pg_otp-$build.so"
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
