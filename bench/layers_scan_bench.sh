#!/usr/bin/env bash
# Reads of a table offloaded again round after round (its segments carry
# layers of changed blocks) against the same rows offloaded in one go,
# side by side in one run. Each round updates one row in 1% of the
# table's pages, freezes the table (so that no later read sets hint bits)
# and offloads it again: a layer per round, merged past yezzey.max_layers
# (8). After the rounds listed, both tables are read: point lookups by
# primary key and a full scan cold (server restarted, yezzey's cache and
# the OS page cache empty), then the scan again warm; each 3 times.
#   bench/layers_scan_bench.sh [ROWS] ["ROUNDS ..."]
ROWS=${1:-10000000}; AT=${2:-"1 5 8 20"}
source "$(dirname "$0")/lib.sh"
start_cluster_and_garage

echo "# layers read benchmark: $ROWS rows, after rounds $AT, $(nproc) cores, $(date -u +%F), $(git -C "$YZ_ROOT" rev-parse --short HEAD)"
create_bench_ms
{ realistic_rows_sql t "$ROWS"; cat <<SQL
ALTER TABLE t ADD PRIMARY KEY (id);
CREATE TABLE t_fresh (LIKE t INCLUDING ALL);
VACUUM (FREEZE, ANALYZE) t; CHECKPOINT;
SQL
} | val
val -c "SELECT count(*) FROM yezzey_offload_relation('t')" >/dev/null
pages=$(val -c "SELECT logical_bytes / 8192 FROM yezzey_relation_status('t')")
rpp=$(( ROWS / pages ))
# 300 primary-key lookups spread over the table, in one query.
lookups="SELECT sum(amount) FROM generate_series(1, 300) k JOIN t_x ON id = (k * 7919 * 13) % $ROWS + 1"

# read TABLE: "cold_lookups_ms cold_scan_ms warm_scan_ms".
read_table() {
    local l s w
    cold_restart >/dev/null 2>&1
    l=$(val -c "SELECT bench_ms(\$q\$${lookups//t_x/$1}\$q\$)")
    cold_restart >/dev/null 2>&1
    s=$(val -c "SELECT bench_ms('SELECT count(*), sum(amount) FROM $1')")
    w=$(val -c "SELECT bench_ms('SELECT count(*), sum(amount) FROM $1')")
    echo "$l $s $w"
}
layers() { val -c "SELECT string_agg(s.layers::text, ',' ORDER BY s.segno) FROM yezzey_segments() s WHERE s.relfilenode = pg_relation_filenode('t') AND s.fork = 'main'"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a / b}'; }

echo "| rounds | layers per heap segment | cold lookups ms (fresh) | ratio | cold scan ms (fresh) | ratio | warm scan ms (fresh) | ratio |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|"
last=$(echo "$AT" | tr ' ' '\n' | sort -n | tail -1)
for r in $(seq 1 "$last"); do
    val -c "UPDATE t SET amount = amount + 1 WHERE id % ($rpp * 100) = $r" -c "VACUUM (FREEZE) t" -c "CHECKPOINT" >/dev/null
    val -c "SELECT count(*) FROM yezzey_offload_relation('t')" >/dev/null 2>&1
    case " $AT " in *" $r "*) ;; *) continue ;; esac
    # The same rows, offloaded in one go.
    val -c "TRUNCATE t_fresh" -c "INSERT INTO t_fresh SELECT * FROM t" -c "VACUUM (FREEZE) t_fresh" -c "CHECKPOINT" >/dev/null
    val -c "SELECT count(*) FROM yezzey_offload_relation('t_fresh')" >/dev/null 2>&1
    declare -A got=()
    for i in 1 2 3; do
        for tb in t t_fresh; do
            read -r l s w <<<"$(read_table $tb)"
            got[$tb,l]+="$l "; got[$tb,s]+="$s "; got[$tb,w]+="$w "
        done
    done
    row="| $r | $(layers) |"
    for k in l s w; do
        a=$(echo "${got[t,$k]}" | median); b=$(echo "${got[t_fresh,$k]}" | median)
        range=$(echo "${got[t,$k]}" | tr ' ' '\n' | grep -v '^$' | sort -g | sed -n '1p;$p' | awk '{printf "%.0f ", $1}' | sed 's/ $//; s/ /–/')
        row+=" $(printf %.0f "$a") ($range) vs $(printf %.0f "$b") | $(ratio "$a" "$b")x |"
    done
    echo "$row"
done
