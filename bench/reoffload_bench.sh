#!/usr/bin/env bash
# Offloading again what changed, side by side with a full offload of the
# same table in one run: a table of realistic rows (and its primary key) is
# offloaded, then each round applies three changes in turn, re-offloading
# after each: updates of one row in 1% of the table's pages, of one row in
# 10% of them, and 5% more rows appended at its end. Reported per change:
# the bytes local before the re-offload (what changed), what the
# re-offload uploaded (raw and stored), the stored bytes against the
# compressed size of the changed blocks (the issue's target: at most 1.2x),
# and the time against the full offload's. Then a cold full scan of the
# table after all the rounds against a fresh copy offloaded in one go.
#   bench/reoffload_bench.sh [ROWS] [ROUNDS]
ROWS=${1:-20000000}; ROUNDS=${2:-3}
source "$(dirname "$0")/lib.sh"
start_cluster_and_garage
mb() { awk -v b="$1" 'BEGIN{printf "%.1f", b / 1048576}'; }

echo "# re-offload benchmark: $ROWS rows, $ROUNDS rounds, $(nproc) cores, $(date -u +%F), $(git -C "$YZ_ROOT" rev-parse --short HEAD)"
create_bench_ms
{ realistic_rows_sql t "$ROWS"; cat <<SQL
ALTER TABLE t ADD PRIMARY KEY (id);
CREATE TABLE t_fresh (LIKE t);
VACUUM (FREEZE, ANALYZE) t; CHECKPOINT;
SQL
} | val

# offload TABLE: offloads it with its index; prints "seconds raw stored".
offload() {
    local t0 out
    t0=$(now)
    out=$(val -c "SELECT coalesce(sum(local_bytes), 0), coalesce(sum(remote_bytes), 0) FROM yezzey_offload_relation('$1')" 2>/dev/null)
    echo "$(since "$t0") ${out//|/ }"
}
# Bytes the table and its index hold locally (written since their offload).
local_both() { val -c "SELECT (SELECT local_bytes FROM yezzey_relation_status('t')) + (SELECT local_bytes FROM yezzey_relation_status('t_pkey'))"; }

pages=$(val -c "SELECT pg_relation_size('t') / 8192")
rpp=$(( ROWS / pages ))
read -r full_s full_raw full_stored <<<"$(offload t)"
ratio=$(awk -v r="$full_raw" -v s="$full_stored" 'BEGIN{print s / r}')
echo "full offload: $(mb "$full_raw") MB raw -> $(mb "$full_stored") MB stored (x$(awk -v r="$ratio" 'BEGIN{printf "%.3f", r}')) in ${full_s} s"

declare -A res
for r in $(seq 1 "$ROUNDS"); do
    for change in p1 p10 a5; do
        case $change in
            p1) val -c "UPDATE t SET amount = amount + 1 WHERE id % ($rpp * 100) = $r" ;;
            p10) val -c "UPDATE t SET amount = amount + 1 WHERE id % ($rpp * 10) = $((r + 7))" ;;
            a5) val -c "INSERT INTO t SELECT id + (SELECT max(id) FROM t), placed, customer, amount, status, note FROM t WHERE id <= $ROWS / 20" ;;
        esac >/dev/null
        val -c "CHECKPOINT"
        changed=$(local_both)
        read -r s raw stored <<<"$(offload t)"
        res[$change,changed]+="$changed "; res[$change,s]+="$s "
        res[$change,raw]+="$raw "; res[$change,stored]+="$stored "
        # Stored bytes over the compressed size of the changed blocks.
        res[$change,over]+="$(awk -v st="$stored" -v c="$changed" -v q="$ratio" 'BEGIN{print (c > 0) ? st / (c * q) : 0}') "
        res[$change,vs]+="$(awk -v a="$s" -v b="$full_s" 'BEGIN{print a / b}') "
    done
    echo "round $r done"
done

echo
echo "| change (median of $ROUNDS) | changed (local) MB | uploaded raw MB | uploaded stored MB | stored / compressed changed blocks | time s | time vs full offload |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for m in "p1:one row in 1% of the pages updated" "p10:one row in 10% of the pages updated" "a5:5% rows appended"; do
    k=${m%%:*}; label=${m#*:}
    awk -v n="$label" -v c="$(echo "${res[$k,changed]}" | median)" -v r="$(echo "${res[$k,raw]}" | median)" \
        -v st="$(echo "${res[$k,stored]}" | median)" -v o="$(echo "${res[$k,over]}" | median)" \
        -v s="$(echo "${res[$k,s]}" | median)" -v v="$(echo "${res[$k,vs]}" | median)" \
        'BEGIN{printf "| %s | %.1f | %.1f | %.1f | %.1fx | %.2f | %.2fx |\n", n, c/1048576, r/1048576, st/1048576, o, s, v}'
done
echo "(ranges: time s $(for k in p1 p10 a5; do echo -n "$k $(echo "${res[$k,s]}" | tr ' ' '\n' | grep -v '^$' | sort -g | sed -n '1p;$p' | paste -sd- ) "; done))"

# A table re-offloaded round after round against one offloaded in one go,
# both frozen first (so that neither scan sets hint bits).
val -c "VACUUM (FREEZE) t" -c "CHECKPOINT" >/dev/null
offload t >/dev/null
val -c "TRUNCATE t_fresh" -c "INSERT INTO t_fresh SELECT * FROM t" -c "VACUUM (FREEZE) t_fresh" -c "CHECKPOINT" >/dev/null
offload t_fresh >/dev/null
declare -A scan
for i in 1 2 3; do
    for tb in t t_fresh; do
        cold_restart
        scan[$tb]+="$(val -c "SELECT bench_ms('SELECT count(*), sum(amount) FROM $tb')") "
    done
done
echo "cold full scan after $((ROUNDS * 3 + 1)) re-offloads: $(echo "${scan[t]}" | median) ms; offloaded in one go: $(echo "${scan[t_fresh]}" | median) ms (median of 3)"
