#!/usr/bin/env bash
# A PostgreSQL 17 cluster (the patched build) on 127.0.0.1:$PGPORT for the
# demo and the tests, run as $YZ_OS_USER.
#   pg.sh init [--no-yezzey]   create the cluster (yezzey preloaded unless told)
#   pg.sh start|stop|restart|status
#   pg.sh crash                kill -9 the postmaster (crash-recovery tests)
#   The server runs with the open-file limit its OS user gets by default
#   on Debian (soft 1024; YEZZEY_NOFILE overrides), as in production.
#   pg.sh env                  print PG* variables for psql
#   pg.sh standby DIR PORT [OPTION...]
#                              base-back up the running cluster into DIR as a
#                              streaming standby on PORT (more pg_basebackup
#                              options after PORT), with a physical
#                              replication slot yz_<basename DIR> (start it with
#                              YEZZEY_PGDATA=DIR YEZZEY_PGPORT=PORT pg.sh start)
#   pg.sh backup DIR PORT [OPTION...]
#                              base-back up the running cluster into DIR as a
#                              copy to start on PORT as a cluster of its own
#                              (a restored backup or a clone: no slot, no
#                              standby.signal)
source "$(dirname "$0")/common.sh"

PGDATA=${YEZZEY_PGDATA:-$YZ_RUN/pgdata}
SOCKDIR=$YZ_RUN/pgsock
LOGFILE=$YZ_RUN/postgres.log
[ -n "${YEZZEY_PGDATA:-}" ] && LOGFILE=$YZ_RUN/$(basename "$PGDATA").log
BIN=$PG_PREFIX/bin

init() {
    [ -x "$BIN/initdb" ] || die "PostgreSQL is not built: run scripts/build-postgres.sh"
    local preload="yezzey"
    [ "${1:-}" = "--no-yezzey" ] && preload=""
    stop 2>/dev/null || true
    rm -rf "$PGDATA"
    mkdir -p "$PGDATA" "$SOCKDIR"
    [ "$(id -u)" = 0 ] && chown "$YZ_OS_USER" "$PGDATA" "$SOCKDIR" "$YZ_RUN"
    as_pg "$BIN/initdb" -D "$PGDATA" -U postgres --data-checksums -A trust -E UTF8 --locale=C >"$YZ_RUN/initdb.log" 2>&1 \
        || { cat "$YZ_RUN/initdb.log"; die "initdb failed"; }
    cat >> "$PGDATA/postgresql.conf" <<CONF

# --- yezzey demo/test cluster ---
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$SOCKDIR'
shared_preload_libraries = '$preload'
max_connections = 60
shared_buffers = 256MB
fsync = on
logging_collector = off
log_min_messages = warning
CONF
    # Point yezzey at the local Garage when it has been set up.
    if [ -n "$preload" ] && [ -f "$YZ_RUN/garage/env" ]; then
        # shellcheck disable=SC1091
        source "$YZ_RUN/garage/env"
        local key=$YZ_RUN/yezzey.key
        [ -f "$key" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$key"
        [ "$(id -u)" = 0 ] && chown "$YZ_OS_USER" "$key"
        chmod 600 "$key"
        cat >> "$PGDATA/postgresql.conf" <<CONF
yezzey.storage_url = 's3://$YEZZEY_BUCKET/pg'
yezzey.s3_endpoint = '$YEZZEY_S3_ENDPOINT'
yezzey.s3_region = '$YEZZEY_S3_REGION'
yezzey.s3_access_key_id = '$AWS_ACCESS_KEY_ID'
yezzey.s3_secret_access_key = '$AWS_SECRET_ACCESS_KEY'
yezzey.key_file = '$key'
# No backups of this cluster to protect: collect retired objects at once,
# and let registered base backups (the tests' standbys and copies) go once
# they stopped.
yezzey.gc_retention = 0
yezzey.backup_retention = 0
CONF
    fi
}

start() {
    # (Set in the server user's own shell: runuser's PAM session resets it.)
    as_pg bash -c 'ulimit -Sn "$0" && exec "$@"' "${YEZZEY_NOFILE:-1024}" \
        "$BIN/pg_ctl" -D "$PGDATA" -l "$LOGFILE" -w -t 60 start >/dev/null \
        || { tail -30 "$LOGFILE"; die "postgres did not start"; }
}

stop() {
    [ -f "$PGDATA/postmaster.pid" ] || return 0
    as_pg "$BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
}

crash() {
    local pid kids
    pid=$(head -1 "$PGDATA/postmaster.pid")
    kids=$(pgrep -P "$pid" || true)
    # Every process at once, as a power cut would: a backend must not go on
    # with its work after its postmaster died.
    # shellcheck disable=SC2086
    kill -9 "$pid" $kids 2>/dev/null || true
    for p in $pid $kids; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    done
}

standby() {
    local dir=$1 port=$2
    shift 2
    rm -rf "$dir"
    # With a physical slot, so the primary (and yezzey_gc) knows how far it got.
    as_pg "$BIN/pg_basebackup" -h "$SOCKDIR" -p "$PGPORT" -U postgres -D "$dir" -R -X stream -c fast \
        -C -S "yz_$(basename "$dir")" "$@"
    # The copied configuration names the primary's port.
    echo "port = $port" | as_pg tee -a "$dir/postgresql.conf" >/dev/null
}

backup() {
    local dir=$1 port=$2
    shift 2
    rm -rf "$dir"
    as_pg "$BIN/pg_basebackup" -h "$SOCKDIR" -p "$PGPORT" -U postgres -D "$dir" -X stream -c fast "$@"
    echo "port = $port" | as_pg tee -a "$dir/postgresql.conf" >/dev/null
}

case "${1:-}" in
    init) init "${2:-}" ;;
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    crash) crash ;;
    standby) shift; standby "$@" ;;
    backup) shift; backup "$@" ;;
    status) as_pg "$BIN/pg_ctl" -D "$PGDATA" status ;;
    env) printf 'export PGHOST=%s PGPORT=%s PGUSER=postgres PATH=%s:$PATH\n' "$SOCKDIR" "$PGPORT" "$BIN" ;;
    *) die "usage: $0 init [--no-yezzey]|start|stop|restart|crash|status|env|standby DIR PORT [OPTION...]|backup DIR PORT [OPTION...]" ;;
esac
