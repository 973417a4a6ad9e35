#!/usr/bin/env bash
# Checks the dispatcher's systemd unit (dispatcher/packaging/otp-dispatcher.service)
# with systemd-analyze: `verify` (syntax, unknown keys, the binary) must print
# nothing, and `security` must rate its exposure at most 1.5 of 10 (its
# --threshold counts in tenths). The unit is sandboxed: a dynamic user, no
# capabilities, a read-only system, only the address families and system
# calls it needs.
# Usage: scripts/check-unit.sh DISPATCHER_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(realpath "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The unit names the installed path; verify needs a binary that exists.
sed "s#/usr/bin/otp-dispatcher#$binary#" dispatcher/packaging/otp-dispatcher.service \
    > "$work/otp-dispatcher.service"
if ! out=$(systemd-analyze verify --man=no "$work/otp-dispatcher.service" 2>&1) || [ -n "$out" ]; then
    echo "systemd-analyze verify: $out" >&2
    exit 1
fi
if ! out=$(systemd-analyze security --offline=true --threshold=15 "$work/otp-dispatcher.service" 2>&1) \
        || grep -q "ignoring" <<<"$out"; then
    echo "$out" >&2
    echo "systemd-analyze security: the unit is exposed above 1.5, or has a setting systemd ignores" >&2
    exit 1
fi
grep "Overall exposure level" <<<"$out"
echo "otp-dispatcher.service: systemd-analyze verify and security passed"
