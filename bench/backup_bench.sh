#!/usr/bin/env bash
# Backups of a mostly offloaded cluster, side by side with the same cluster
# holding only its local part and with the same data all local: bytes and
# time of pg_basebackup (tar) and barman-cloud-backup (into Garage), and time
# and disk usage of restoring each (pg_basebackup -Fp -X stream;
# barman-cloud-restore).
#   bench/backup_bench.sh [LOCAL_ROWS] [OFFLOADED_ROWS] [ROUNDS]
# Cluster "offloaded": LOCAL_ROWS in a local table plus OFFLOADED_ROWS in an
# offloaded one; "local": the same local table alone; "full": both tables,
# nothing offloaded.
LOCAL_ROWS=${1:-8000000}; OFF_ROWS=${2:-40000000}; ROUNDS=${3:-3}
source "$(dirname "$0")/lib.sh"
bash "$S/garage.sh" start >/dev/null
# shellcheck disable=SC1091
source "$YZ_RUN/garage/env"
BIN=$PG_PREFIX/bin
REPO=s3://$YEZZEY_BUCKET/bench-barman
CLUSTERS=(offloaded local full)
declare -A DATA=([offloaded]=$YZ_RUN/pgdata [local]=$YZ_RUN/local_only [full]=$YZ_RUN/all_local)
declare -A PORT=([offloaded]=$PGPORT [local]=$((PGPORT + 1)) [full]=$((PGPORT + 2)))
ctl() { YEZZEY_PGDATA=${DATA[$1]} YEZZEY_PGPORT=${PORT[$1]} bash "$S/pg.sh" "${@:2}"; }
val() { local c=$1; shift; psql -XAtq -v ON_ERROR_STOP=1 -p "${PORT[$c]}" "$@"; }
trap 'for c in "${CLUSTERS[@]}"; do ctl "$c" stop >/dev/null 2>&1; done; bash "$S/garage.sh" stop >/dev/null 2>&1' EXIT
barman_env=(env "AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY" "AWS_DEFAULT_REGION=$YEZZEY_S3_REGION")
barman() { as_pg "${barman_env[@]}" "$BARMAN_VENV/bin/$1" --endpoint-url "$YEZZEY_S3_ENDPOINT" "${@:2}"; }
mb() { awk -v b="$1" 'BEGIN{printf "%.0f", b / 1048576}'; }
# Bytes a directory's files take on disk, without pg_wal and the frame cache.
du_local() { du -s -B1 --exclude=pg_wal --exclude=pgsql_tmp_cache "$1" | cut -f1; }

create() { # cluster
    local c=$1
    YEZZEY_PGDATA=${DATA[$c]} YEZZEY_PGPORT=${PORT[$c]} bash "$S/pg.sh" init >/dev/null
    ctl "$c" start
    val "$c" -c "CREATE EXTENSION yezzey"
    rows() { # table rows
        { realistic_rows_sql "$1" "$2"; cat <<SQL
ALTER TABLE $1 ADD PRIMARY KEY (id);
VACUUM (FREEZE, ANALYZE) $1;
SQL
        } | val "$c"
    }
    rows t_hot "$LOCAL_ROWS"
    [ "$c" = local ] || rows t_cold "$OFF_ROWS"
    [ "$c" = offloaded ] && val "$c" -c "SELECT * FROM yezzey_offload_relation('t_cold')" >/dev/null
    val "$c" -c "CHECKPOINT"
    # WAL archiving into Barman's repository, from here on.
    local archive="${barman_env[*]} $BARMAN_VENV/bin/barman-cloud-wal-archive --endpoint-url $YEZZEY_S3_ENDPOINT $REPO $c %p"
    cat >> "${DATA[$c]}/postgresql.conf" <<CONF
archive_mode = on
archive_command = '$archive'
yezzey.barman_repository = '$REPO/$c'
CONF
    ctl "$c" restart
}

declare -A res
# timed CLUSTER KEY COMMAND...: runs COMMAND, keeps its wall time (s) and the
# machine's busy time meanwhile (core-seconds, both cores, Garage included).
timed() {
    local c=$1 k=$2 t0 b0; shift 2
    t0=$(now); b0=$(busy_ms)
    "$@"
    res[$c,$k]+="$(since "$t0") "
    res[$c,${k}_cpu]+="$(awk -v a="$b0" -v b="$(busy_ms)" 'BEGIN{print (b - a) / 1000}') "
}
measure() { # cluster
    local c=$1 out id
    out=$YZ_RUN/backup-$c
    rm -rf "$out"; mkdir -p "$out"; chown "$YZ_OS_USER" "$out"
    timed "$c" bb_time as_pg "$BIN/pg_basebackup" -h "$PGHOST" -p "${PORT[$c]}" -U postgres -D "$out" -Ft -X none -c fast
    res[$c,bb_bytes]+="$(stat -c %s "$out/base.tar") "
    rm -rf "$out"
    timed "$c" bbr_time as_pg "$BIN/pg_basebackup" -h "$PGHOST" -p "${PORT[$c]}" -U postgres -D "$out" -X stream -c fast
    res[$c,bbr_disk]+="$(du_local "$out") "
    rm -rf "$out"
    timed "$c" bm_time barman barman-cloud-backup --immediate-checkpoint -h "$PGHOST" -p "${PORT[$c]}" -U postgres "$REPO" "$c"
    id=$(barman barman-cloud-backup-list "$REPO" "$c" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["backups_list"][-1]["backup_id"])')
    res[$c,bm_bytes]+="$(YEZZEY_STORAGE_URL=$REPO "$YZ_ROOT/target/release/yezzey-tool" ls "$c/base/$id/" | awk '{s += $1} END {print s}') "
    mkdir -p "$out"; chown "$YZ_OS_USER" "$out"
    timed "$c" bmr_time barman barman-cloud-restore "$REPO" "$c" "$id" "$out"
    res[$c,bmr_disk]+="$(du_local "$out") "
    rm -rf "$out"
    barman barman-cloud-backup-delete "$REPO" "$c" --backup-id "$id" # keep Garage's disk small
}

echo "# backup benchmark: $LOCAL_ROWS local rows, $OFF_ROWS offloaded rows, $ROUNDS rounds, $(nproc) cores, $(date -u +%F)"
for c in "${CLUSTERS[@]}"; do create "$c"; done
for c in "${CLUSTERS[@]}"; do
    echo "$c: $(mb "$(du_local "${DATA[$c]}")") MB local on disk, $(mb "$(val "$c" -c "SELECT coalesce(sum(remote_blocks) * 8192, 0) FROM yezzey_segments()")") MB offloaded"
done
for r in $(seq 1 "$ROUNDS"); do
    # Each round starts with another cluster.
    for i in 0 1 2; do measure "${CLUSTERS[$(( (r + i) % 3 ))]}"; done
    echo "round $r done"
done

local_bytes=$(du_local "${DATA[offloaded]}")
range() { tr ' ' '\n' | grep -v '^$' | sort -g | awk -v f="$1" 'NR==1{a=$1} {b=$1} END{printf f "–" f, a, b}'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN{print a / b}'; }
# cell CLUSTER KEY FORMAT SCALE RANGES: a cluster's median of KEY over SCALE,
# with its range when RANGES is 1.
cell() {
    printf "$3" "$(div "$(echo "${res[$1,$2]}" | median)" "$4")"
    if [ "$5" = 1 ]; then printf " (%s)" "$(echo "${res[$1,$2]}" | range "$3")"; fi
}
# ratio KEY CLUSTER RANGES: the offloaded cluster's median of KEY over
# CLUSTER's (two decimals beside ranges, three otherwise).
ratio() {
    local f=%.3fx; [ "$3" = 1 ] && f=%.2fx
    printf "$f" "$(div "$(echo "${res[offloaded,$1]}" | median)" "$(echo "${res[$2,$1]}" | median)")"
}
row() { # LABEL KEY FORMAT SCALE RANGES
    echo "| $1 | $(cell offloaded "${@:2}") | $(cell local "${@:2}") | $(ratio "$2" local "$5") | $(cell full "${@:2}") | $(ratio "$2" full "$5") |"
}
echo
echo "| measurement (median of $ROUNDS, range) | mostly offloaded | local part only | ratio | same data, nothing offloaded | ratio |"
echo "|---|---:|---:|---:|---:|---:|"
for m in "bb_bytes:pg_basebackup -Ft -X none, MB written:mb" "bb_time:pg_basebackup -Ft -X none, s:s" \
         "bbr_time:pg_basebackup -Fp -X stream (a restore), s:s" "bbr_disk:restored copy on disk (no WAL), MB:mb" \
         "bm_bytes:barman-cloud-backup, MB stored:mb" "bm_time:barman-cloud-backup, s:s" \
         "bmr_time:barman-cloud-restore, s:s" "bmr_disk:barman-cloud-restore on disk (no WAL), MB:mb"; do
    IFS=: read -r k label unit <<<"$m"
    if [ "$unit" = mb ]; then
        row "$label" "$k" %.1f 1048576 0
    else
        row "$label" "$k" %.2f 1 1
        row "${label%, s}, machine busy core-s" "${k}_cpu" %.2f 1 0
    fi
done
echo
echo "mostly offloaded cluster's local data: $(mb "$local_bytes") MB; backup bytes / local data: pg_basebackup $(echo "${res[offloaded,bb_bytes]}" | median | awk -v l="$local_bytes" '{printf "%.3f", $1/l}'), Barman $(echo "${res[offloaded,bm_bytes]}" | median | awk -v l="$local_bytes" '{printf "%.3f", $1/l}')"
