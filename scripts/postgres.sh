# The one place that knows where each PostgreSQL version lives (sourced by
# the other scripts). PG_VERSION chooses the version (default 15, the one
# the README's two commands use); after sourcing, PG_BIN is its bin
# directory and PG_CONFIG its pg_config.
#
# 15 is Debian 12's package. Other versions would live under
# PG_OTP_POSTGRES_HOME (unpacked PostgreSQL builds, one directory per
# version); none is set up yet.

PG_VERSION=${PG_VERSION:-15}

# pg_bindir VERSION: where that version's programs are.
pg_bindir() {
    case "$1" in
    15) echo "/usr/lib/postgresql/15/bin" ;;
    *) echo "${PG_OTP_POSTGRES_HOME:-/opt/pg_otp-postgres}/$1/bin" ;;
    esac
}

PG_BIN=$(pg_bindir "$PG_VERSION")
PG_CONFIG=$PG_BIN/pg_config
# Rust tests and programs find the server's programs here.
export PG_OTP_TEST_BINDIR=$PG_BIN
