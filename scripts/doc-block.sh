#!/usr/bin/env bash
# Prints or runs a command block of the documentation: the fenced block
# right after the line `<!-- ci: NAME -->` in README.md or docs/*.md, so
# that CI runs the commands exactly as a reader sees them (see
# scripts/check-docs.sh, which checks that every block is run or tested).
#   doc-block.sh show NAME
#   doc-block.sh run NAME      (bash, stopping at the first failing command)
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?usage: doc-block.sh show|run NAME} name=${2:?usage: doc-block.sh show|run NAME}
block=$(awk -v marker="<!-- ci: $name -->" '
    found == 1 && /^```/ { found = 2; next }
    found == 2 && /^```/ { exit }
    found == 2 { print }
    $0 == marker { found = 1 }' README.md docs/*.md)
if [ -z "$block" ]; then
    echo "doc-block.sh: no block marked <!-- ci: $name --> in README.md or docs/" >&2
    exit 2
fi
case "$action" in
show) printf '%s\n' "$block" ;;
run)
    printf '%s\n' "$block" | sed 's/^/  $ /'
    bash -euo pipefail -c "$block"
    ;;
*) echo "usage: doc-block.sh show|run NAME" >&2; exit 2 ;;
esac
