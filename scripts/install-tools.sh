#!/usr/bin/env bash
# cargo-pgrx and Garage, built from crates.io once and kept in ~/.cargo/bin;
# Barman's cloud tools from PyPI, in a virtual environment under $YZ_CACHE
# (made with Debian's python3, which the server's OS user can run).
source "$(dirname "$0")/common.sh"

installed_version() { "$1" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1 || true; }

if [ "$(installed_version cargo-pgrx)" != "$PGRX_VERSION" ]; then
    log "building cargo-pgrx $PGRX_VERSION (about 4 minutes on 2 cores)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi
if [ "$(installed_version garage)" != "$GARAGE_VERSION" ]; then
    log "building garage $GARAGE_VERSION (about 7 minutes on 2 cores)"
    cargo install garage --version "$GARAGE_VERSION" --locked --quiet \
        --no-default-features --features bundled-libs,lmdb
fi
if [ "$("$BARMAN_VENV/bin/barman-cloud-backup" --version 2>/dev/null)" != "barman-cloud-backup $BARMAN_VERSION" ]; then
    log "installing Barman $BARMAN_VERSION's cloud tools from PyPI into $BARMAN_VENV"
    rm -rf "$BARMAN_VENV"
    /usr/bin/python3 -m venv "$BARMAN_VENV"
    "$BARMAN_VENV/bin/pip" install -q "barman[cloud]==$BARMAN_VERSION"
fi
