#!/usr/bin/env bash
# Installs the extension's package for PostgreSQL MAJOR (scripts/package.sh
# built it into DIR). For 15, Debian's server, that is `dpkg -i`. 16-18 here
# are wheels' trees, not Debian packages, so dpkg would refuse the package's
# dependency on postgresql-N: its files are put where that tree's pg_config
# says instead, each replaced by a rename, as dpkg does (a running server
# may have the old library mapped).
#   bash scripts/install-package.sh MAJOR [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh

major=${1:?usage: install-package.sh MAJOR [DIR]}
dir=${2:-target/debian}
deb=$(ls "$dir/postgresql-$major-pg-otp_"*_amd64.deb)
if [ "$major" = 15 ]; then
    dpkg -i "$deb"
    exit
fi
config=$(pg_bindir "$major")/pg_config
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
dpkg-deb -x "$deb" "$unpacked"
place() { # FILE DIR
    install -m 644 "$1" "$2/.$(basename "$1").new"
    mv -f "$2/.$(basename "$1").new" "$2/$(basename "$1")"
}
place "$unpacked/usr/lib/postgresql/$major/lib/pg_otp.so" "$("$config" --pkglibdir)"
for file in "$unpacked/usr/share/postgresql/$major/extension/"*; do
    place "$file" "$("$config" --sharedir)/extension"
done
echo "installed $(basename "$deb") into $("$config" --pkglibdir) and $("$config" --sharedir)/extension"
