#!/usr/bin/env bash
# Start/stop a single-node Garage S3 server on 127.0.0.1 for the demo and the
# tests. `start` creates the layout, the bucket and an access key on first
# use and writes their settings to $YZ_RUN/garage/env (source it).
source "$(dirname "$0")/common.sh"

G=$YZ_RUN/garage
CONF=$G/garage.toml
garage_cmd() { garage -c "$CONF" "$@"; }

running() { [ -f "$G/pid" ] && kill -0 "$(cat "$G/pid")" 2>/dev/null; }

# Garage's S3 server leaves Nagle's algorithm on, and Linux delays ACKs:
# together they stall a small response ~40 ms after its headers (measured:
# 8 KiB range GETs took 44 ms instead of 3). Production stores set
# TCP_NODELAY; for this local one, ACK at once on the loopback route (the
# setting lives until reboot and only changes when ACKs are sent).
loopback_quickack() {
    [ "$(id -u)" = 0 ] && command -v ip >/dev/null || return 0
    ip route show table local 2>/dev/null | grep -q '^local 127.0.0.1 .*quickack 1' && return 0
    ip route replace local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1 quickack 1 2>/dev/null \
        || log "could not enable quickack on the loopback route: small GETs from Garage may stall 40 ms"
}

start() {
    loopback_quickack
    command -v garage >/dev/null || die "garage is not installed: run scripts/install-tools.sh"
    mkdir -p "$G/meta" "$G/data"
    if [ ! -f "$CONF" ]; then
        cat > "$CONF" <<CONF
metadata_dir = "$G/meta"
data_dir = "$G/data"
db_engine = "lmdb"
replication_factor = 1
# yezzey's objects are compressed and encrypted already, so zstd's fastest
# level stores them almost as they are; but Garage checks a compressed
# block on read by zstd's own checksum, and a plain one by BLAKE2, which
# cost 12% of all CPU in a cold scan of offloaded data.
compression_level = -5
rpc_bind_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_public_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$GARAGE_S3_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$GARAGE_ADMIN_PORT"
admin_token = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
CONF
    fi
    # A run directory set up with other ports keeps them (its env says so).
    conf_port=$(sed -n '/^\[s3_api\]/,/^\[/s/^api_bind_addr = "127.0.0.1:\([0-9]*\)"/\1/p' "$CONF")
    GARAGE_S3_PORT=${conf_port:-$GARAGE_S3_PORT}
    if ! running; then
        RUST_LOG=${RUST_LOG:-warn} nohup garage -c "$CONF" server >"$G/garage.log" 2>&1 &
        echo $! > "$G/pid"
    fi
    for _ in $(seq 1 100); do
        garage_cmd status >/dev/null 2>&1 && break
        running || { tail -20 "$G/garage.log"; die "garage exited"; }
        sleep 0.2
    done
    garage_cmd status >/dev/null 2>&1 || die "garage did not answer (see $G/garage.log)"
    if [ ! -f "$G/env" ]; then
        node=$(garage_cmd node id -q | cut -d@ -f1)
        garage_cmd layout assign -z dc1 -c 1G "$node" >/dev/null
        garage_cmd layout apply --version 1 >/dev/null
        key_id=GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
        secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
        garage_cmd key import --yes -n yezzey "$key_id" "$secret" >/dev/null
        garage_cmd bucket create "$GARAGE_BUCKET" >/dev/null
        garage_cmd bucket allow --read --write --owner "$GARAGE_BUCKET" --key yezzey >/dev/null
        cat > "$G/env.tmp" <<ENV
export YEZZEY_RUN=$YZ_RUN
export YEZZEY_S3_ENDPOINT=http://127.0.0.1:$GARAGE_S3_PORT
export YEZZEY_S3_REGION=garage
export YEZZEY_BUCKET=$GARAGE_BUCKET
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$secret
ENV
        mv "$G/env.tmp" "$G/env"
    fi
    # Wait until the S3 API answers (the layout takes a moment to settle).
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$GARAGE_S3_PORT/" && break
        sleep 0.1
    done
    log "garage listening on 127.0.0.1:$GARAGE_S3_PORT (bucket $GARAGE_BUCKET; settings in $G/env)"
}

stop() {
    if running; then
        kill "$(cat "$G/pid")" 2>/dev/null || true
        for _ in $(seq 1 50); do running || break; sleep 0.1; done
        running && kill -9 "$(cat "$G/pid")" 2>/dev/null || true
    fi
    rm -f "$G/pid"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    # Freeze/thaw the server (tests of stalled stores).
    pause) kill -STOP "$(cat "$G/pid")" ;;
    resume) kill -CONT "$(cat "$G/pid")" ;;
    env) cat "$G/env" ;;
    *) die "usage: $0 start|stop|pause|resume|env" ;;
esac
