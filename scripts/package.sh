#!/usr/bin/env bash
# Builds the Debian packages, into OUT_DIR (default target/debian):
#   postgresql-<N>-pg-otp_<version>_amd64.deb  the extension for PostgreSQL N
#       (cargo pgrx package; the install and update scripts of every release,
#       so that ALTER EXTENSION pg_otp UPDATE works from each), for N in
#       PG_VERSIONS (default: PG_VERSION, see scripts/postgres.sh);
#   otp-dispatcher_<version>_amd64.deb          the dispatcher, its systemd
#       unit and an example configuration.
#   bash scripts/package.sh [--extension-only] [OUT_DIR]
# Files get the time of the last commit and root ownership, so the same
# commit gives the same package contents.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
source scripts/postgres.sh

dispatcher=true
if [ "${1:-}" = --extension-only ]; then
    dispatcher=false
    shift
fi
out=$(realpath -m "${1:-target/debian}")
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
maintainer="pg_otp maintainers <maintainers@users.noreply.r-seed-afd9afd7.example>"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
# rustc writes source paths into the binaries, among them the path of the
# bindings pgrx generates in the target directory: name this checkout and
# its target directory the same everywhere, so that two checkouts of one
# commit build the same packages, byte for byte. (The last prefix that
# matches wins.)
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }--remap-path-prefix=$PWD=/pg_otp --remap-path-prefix=$target_dir=/pg_otp/target"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# The highest glibc symbol version a binary needs, for its Depends.
glibc_needed() {
    objdump -T "$1" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1
}

# The documentation every package carries: copyright, changelog.
package_docs() { # ROOT PACKAGE
    local doc=$1/usr/share/doc/$2
    mkdir -p "$doc"
    cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pg_otp
Source: the pg_otp repository

Files: *
Copyright: 2026 pg_otp maintainers
License: PostgreSQL
 Permission to use, copy, modify, and distribute this software and its
 documentation for any purpose, without fee, and without a written agreement
 is hereby granted, provided that the above copyright notice and this
 paragraph and the following two paragraphs appear in all copies.
 .
 IN NO EVENT SHALL THE AUTHORS BE LIABLE TO ANY PARTY FOR DIRECT, INDIRECT,
 SPECIAL, INCIDENTAL, OR CONSEQUENTIAL DAMAGES, INCLUDING LOST PROFITS,
 ARISING OUT OF THE USE OF THIS SOFTWARE AND ITS DOCUMENTATION, EVEN IF THE
 AUTHORS HAVE BEEN ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
 .
 THE AUTHORS SPECIFICALLY DISCLAIM ANY WARRANTIES, INCLUDING, BUT NOT LIMITED
 TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR
 PURPOSE. THE SOFTWARE PROVIDED HEREUNDER IS ON AN "AS IS" BASIS, AND THE
 AUTHORS HAVE NO OBLIGATIONS TO PROVIDE MAINTENANCE, SUPPORT, UPDATES,
 ENHANCEMENTS, OR MODIFICATIONS.
EOF
    {
        echo "$2 ($version) unstable; urgency=medium"
        echo
        echo "  * pg_otp $version: see docs/operations.md, Upgrading, for what changed."
        echo
        echo " -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
    } | gzip -9n >"$doc/changelog.gz" # a native package's name for it
}

# Writes DEBIAN/control and md5sums, fixes times and modes, builds the .deb.
build_deb() { # ROOT PACKAGE DEPENDS DESCRIPTION
    local root=$1 package=$2 depends=$3 description=$4
    mkdir -p "$root/DEBIAN"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
        >"$root/DEBIAN/md5sums"
    cat >"$root/DEBIAN/control" <<EOF
Package: $package
Version: $version
Architecture: amd64
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $depends
Section: database
Priority: optional
Description: $description
EOF
    find "$root" -type d -exec chmod 755 {} +
    find "$root" -type f ! -path '*/DEBIAN/*' -exec chmod 644 {} +
    chmod 644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"
    find "$root" -path '*/usr/bin/*' -type f -exec chmod 755 {} +
    find "$root" -exec touch --no-dereference -d "@$SOURCE_DATE_EPOCH" {} +
    dpkg-deb --root-owner-group -Zxz --build "$root" "$out/${package}_${version}_amd64.deb" >/dev/null
    echo "$out/${package}_${version}_amd64.deb"
}

for pg in ${PG_VERSIONS:-$PG_VERSION}; do
    package=postgresql-$pg-pg-otp
    root=$work/$package
    features=()
    [ "$pg" = 15 ] || features=(--no-default-features --features "pg$pg")
    stage=$work/stage-$pg
    cargo pgrx package --pg-config "$(pg_bindir "$pg")/pg_config" --out-dir "$stage" "${features[@]}" >/dev/null
    # Where Debian's postgresql-N puts extensions (pgrx used the paths of the
    # pg_config it built against, which for 16-18 here is a wheel's tree).
    so=$root/usr/lib/postgresql/$pg/lib/pg_otp.so
    extension=$root/usr/share/postgresql/$pg/extension
    install -D "$(find "$stage" -name pg_otp.so)" "$so"
    mkdir -p "$extension"
    cp "$(dirname "$(find "$stage" -name pg_otp.control)")"/pg_otp* "$extension/"
    cp sql/released/pg_otp--*.sql "$extension/"
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$so"
    package_docs "$root" "$package"
    build_deb "$root" "$package" \
        "postgresql-$pg, libc6 (>= $(glibc_needed "$so")), libgcc-s1" \
        "one-time codes and authenticated sessions inside PostgreSQL $pg
 pg_otp verifies who a chat agent talks to: it finds the person behind an
 identifying value in a table you configure, queues a random 6-digit code
 for delivery by WhatsApp or email, checks what the person types (3
 attempts, 5 minutes, once), and opens a session that row-level security
 can bind the database's answers to. Needs shared_preload_libraries =
 'pg_otp' and otp.secret_key; the otp-dispatcher package delivers the codes."
done

$dispatcher || exit 0
cargo build --release --locked -p otp-dispatcher >/dev/null
root=$work/otp-dispatcher
install -D target/release/otp-dispatcher "$root/usr/bin/otp-dispatcher"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/otp-dispatcher"
install -D dispatcher/packaging/otp-dispatcher.service "$root/lib/systemd/system/otp-dispatcher.service"
package_docs "$root" otp-dispatcher
install -D docs/dispatcher.md "$root/usr/share/doc/otp-dispatcher/README.md"
# Its manual is `otp-dispatcher --help` and README.md; lintian is told so.
mkdir -p "$root/usr/share/lintian/overrides"
echo "otp-dispatcher: no-manual-page [usr/bin/otp-dispatcher]" >"$root/usr/share/lintian/overrides/otp-dispatcher"
install -D dispatcher/otp-dispatcher.example.toml \
    "$root/usr/share/doc/otp-dispatcher/examples/dispatcher.toml"
build_deb "$root" otp-dispatcher \
    "libc6 (>= $(glibc_needed "$root/usr/bin/otp-dispatcher")), libgcc-s1" \
    "delivers pg_otp's one-time codes by WhatsApp and email
 otp-dispatcher claims the codes pg_otp queues in its outbox and sends them
 through the WhatsApp Business Cloud API or SMTP, each agent under its own
 sender, template and language; it records WhatsApp's delivery statuses
 from signed webhooks. Runs as a hardened systemd service (DynamicUser,
 credentials through LoadCredential=, reload on SIGHUP)."
