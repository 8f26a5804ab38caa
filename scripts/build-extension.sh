#!/usr/bin/env bash
# Build and install the yezzey extension into the patched PostgreSQL, and
# build the storage tools. cargo skips what is up to date.
source "$(dirname "$0")/common.sh"

[ -x "$PG_CONFIG" ] || die "PostgreSQL is not built: run scripts/build-postgres.sh"
# pgrx keeps its configuration in ~/.pgrx; point it at our build.
if ! grep -qs "$PG_CONFIG" "$HOME/.pgrx/config.toml"; then
    log "cargo pgrx init --pg17 $PG_CONFIG"
    cargo pgrx init --pg17 "$PG_CONFIG" >/dev/null
fi
log "building and installing the yezzey extension"
(cd "$YZ_ROOT/ext" && PG_CONFIG=$PG_CONFIG cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null)
log "building yezzey-tool"
(cd "$YZ_ROOT" && cargo build --release -q -p yezzey-storage --bin yezzey-tool)
