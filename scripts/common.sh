# Shared settings for the project's scripts; sourced, never run.
# Everything built or downloaded lives under $YZ_CACHE so a second run (or a
# fresh clone on the same machine) reuses it; nothing generated lives in git.
set -euo pipefail

YZ_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" = 0 ]; then
    YZ_CACHE=${YEZZEY_CACHE:-/opt/yezzey-cache}
else
    YZ_CACHE=${YEZZEY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/yezzey}
fi
# PostgreSQL refuses to run as root: servers run as this OS user instead.
YZ_OS_USER=${YEZZEY_OS_USER:-postgres}

PG_MAJOR=17
PGRX_VERSION=0.18.0
GARAGE_VERSION=2.5.0
BARMAN_VERSION=3.19.1

# The install prefix is keyed by the patch series, so editing a patch rebuilds.
patch_hash() {
    { cat "$YZ_ROOT"/gp_patches/postgresql-$PG_MAJOR/*.patch 2>/dev/null || true; } | sha256sum | cut -c1-12
}
PG_PREFIX=$YZ_CACHE/pg$PG_MAJOR-$(patch_hash)
PG_CONFIG=$PG_PREFIX/bin/pg_config

# Barman's cloud tools (backup tests and the backup benchmark).
BARMAN_VENV=$YZ_CACHE/barman-venv

# Runtime state of the demo/test servers (data directories, logs, Garage).
YZ_RUN=${YEZZEY_RUN:-$YZ_CACHE/run}
# Below Linux's ephemeral range (32768-60999): a server restarted while
# many client connections come and go must not find its port taken by one.
# (Standby clusters in the tests take PGPORT+1 and up.)
PGPORT=${YEZZEY_PGPORT:-25417}
GARAGE_S3_PORT=${YEZZEY_GARAGE_S3_PORT:-25430}
GARAGE_RPC_PORT=${YEZZEY_GARAGE_RPC_PORT:-25431}
GARAGE_ADMIN_PORT=${YEZZEY_GARAGE_ADMIN_PORT:-25433}
GARAGE_BUCKET=${YEZZEY_BUCKET:-yezzey}

export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a command as the server's OS user (a no-op wrapper when not root).
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$YZ_OS_USER" -- "$@"
    else
        "$@"
    fi
}
