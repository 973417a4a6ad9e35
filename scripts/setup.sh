#!/usr/bin/env bash
# Installs what building and testing pg_otp needs on Debian 12, as root:
# PostgreSQL 15 with server headers, clang (for pgrx's bindgen), sudo (pgrx
# runs the test cluster as postgres through it), aiosmtpd (a real SMTP server
# for the dispatcher tests), systemd (systemd-analyze checks the dispatcher's
# unit), lintian and binutils (the packages) and cargo-pgrx 0.18.0; with
# PG_VERSIONS="15 17" (say), PostgreSQL 17 too (scripts/install-postgres.sh).
# Safe to run again: every step is skipped when already done.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"

source "$(dirname "$0")/postgres.sh"
PGRX_VERSION=0.18.0

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs system packages)" >&2
    exit 1
fi

missing=()
for package in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo python3-aiosmtpd systemd lintian binutils; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
    echo "==> cargo install cargo-pgrx $PGRX_VERSION (about 5 minutes)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# Each PostgreSQL version asked for (PG_VERSIONS, default PG_VERSION): 15
# from Debian (above), others from their wheels; then pgrx knows them all.
versions=${PG_VERSIONS:-$PG_VERSION}
init=()
stale=false
for version in $versions; do
    [ "$version" = 15 ] || bash "$(dirname "$0")/install-postgres.sh" "$version"
    config=$(pg_bindir "$version")/pg_config
    init+=("--pg$version" "$config")
    grep -qs "^pg$version = \"$config\"" "$HOME/.pgrx/config.toml" || stale=true
done
# pgrx init forgets versions it is not given: keep those already known.
while IFS=' =' read -r key config; do
    config=${config//\"/}
    case " $versions " in *" ${key#pg} "*) continue ;; esac
    [ -x "$config" ] && init+=("--$key" "$config")
done < <(grep -s '^pg[0-9]* = ' "$HOME/.pgrx/config.toml")
if $stale; then
    echo "==> cargo pgrx init ${init[*]}"
    # As root pgrx prints "Skipping initdb": expected, tests make their own clusters.
    cargo pgrx init "${init[@]}"
fi
