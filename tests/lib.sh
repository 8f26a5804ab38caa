# Helpers for the test scripts: a fresh cluster of the patched server.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
S=$YZ_ROOT/scripts
eval "$(bash "$S/pg.sh" env)"
fresh_cluster() { bash "$S/pg.sh" init "${1:-}" && bash "$S/pg.sh" start; }
stop_cluster() { bash "$S/pg.sh" stop; }
q() { psql -XAtq -v ON_ERROR_STOP=1 "$@"; }
