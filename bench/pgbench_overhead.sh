#!/usr/bin/env bash
# Overhead of yezzey's pass-through storage manager: pgbench select-only (-S)
# and the default TPC-B-like script on the patched server, with and without
# yezzey in shared_preload_libraries, alternating runs on one cluster and one
# data set; prints per-run TPS and the median ratio (with / without).
#   bench/pgbench_overhead.sh [ROUNDS] [SECONDS] [SCALE]
ROUNDS=${1:-5}; SECS=${2:-20}; SCALE=${3:-20}
source "$(dirname "$0")/lib.sh"
PGDATA=$YZ_RUN/pgdata
bash "$S/pg.sh" init >/dev/null
trap 'bash "$S/pg.sh" stop >/dev/null 2>&1 || true' EXIT

set_preload() {
    bash "$S/pg.sh" stop
    sed -i "s/^shared_preload_libraries = .*/shared_preload_libraries = '$1'/" "$PGDATA/postgresql.conf"
    bash "$S/pg.sh" start
}
set_preload yezzey
pgbench -i -q -s "$SCALE" postgres >/dev/null 2>&1
psql -XAtq -c "VACUUM ANALYZE" postgres

run() { # mode: S|tpcb -> tps
    local args=(-n -T "$SECS" -c 2 -j 1 postgres)
    [ "$1" = S ] && args=(-S "${args[@]}")
    pgbench "${args[@]}" 2>/dev/null | awk '/^tps = /{print $3}'
}

declare -A tps
for r in $(seq 1 "$ROUNDS"); do
    # Alternate which configuration goes first, so drift favours neither.
    order="yezzey none"; [ $((r % 2)) = 0 ] && order="none yezzey"
    for cfg in $order; do
        set_preload "$([ "$cfg" = yezzey ] && echo yezzey)"
        psql -XAtq -c "SELECT count(*) FROM pgbench_accounts" postgres >/dev/null   # warm
        for mode in S tpcb; do
            t=$(run $mode)
            tps[$cfg,$mode]+="$t "
            printf 'round %d %-6s %-4s %10.1f tps\n' "$r" "$cfg" "$mode" "$t"
        done
    done
done

echo
echo "pgbench scale $SCALE, $ROUNDS alternating rounds of $SECS s, 2 clients; medians:"
for mode in S tpcb; do
    w=$(echo "${tps[yezzey,$mode]}" | median); n=$(echo "${tps[none,$mode]}" | median)
    # Per-round ratios too: each pair ran back to back.
    ratios=$(paste <(echo "${tps[yezzey,$mode]}" | tr ' ' '\n' | grep -v '^$') <(echo "${tps[none,$mode]}" | tr ' ' '\n' | grep -v '^$') | awk '{printf "%.4f ", $1/$2}')
    printf '%-5s with yezzey %9.1f tps, without %9.1f tps, ratio of medians %.4f, median of paired ratios %.4f\n' \
        "$mode" "$w" "$n" "$(awk -v a="$w" -v b="$n" 'BEGIN{print a/b}')" "$(echo "$ratios" | median)"
done
