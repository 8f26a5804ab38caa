#!/usr/bin/env bash
# Sets up everything on a fresh machine (Debian packages, patched
# PostgreSQL 17, cargo-pgrx, Garage, the extension), starts a cluster with
# yezzey preloaded and Garage on 127.0.0.1, and runs the demo. Re-running
# skips whatever is already built.
source "$(dirname "$0")/common.sh"
S=$YZ_ROOT/scripts

bash "$S/install-deps.sh"
bash "$S/build-postgres.sh"
bash "$S/install-tools.sh"
bash "$S/build-extension.sh"
[ "${1:-}" = "--no-demo" ] && exit 0

bash "$S/garage.sh" start
bash "$S/pg.sh" init
bash "$S/pg.sh" start
bash "$S/demo.sh"
log "the demo cluster keeps running: eval \"\$(bash scripts/pg.sh env)\" && psql; stop it with bash scripts/pg.sh stop && bash scripts/garage.sh stop"
