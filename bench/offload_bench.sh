#!/usr/bin/env bash
# Offloaded vs local, side by side in one run, on identical tables of
# realistic rows (numbers, dates, text of varying length):
#   offload throughput, compressed size, full scans and index point lookups
#   with a cold cache (server restarted, yezzey cache wiped, OS page cache
#   dropped) and a warm one, and the first row of a cold scan; then the cold
#   scans again with the objects copied to a local directory (no object
#   store sharing the CPU).
#   bench/offload_bench.sh [ROWS] [ROUNDS]
ROWS=${1:-10000000}; ROUNDS=${2:-3}
source "$(dirname "$0")/lib.sh"
start_cluster_and_garage

# Garage's CPU time in ms (the whole machine's is lib.sh's busy_ms).
garage_ms() { awk -v hz="$(getconf CLK_TCK)" '{print int(($14+$15) * 1000 / hz)}' "/proc/$(cat "$YZ_RUN/garage/pid")/stat"; }
# timed KEY TABLE PSQL-ARGS...: runs a bench_ms query, keeps its time and
# the CPU the machine (KEY_cpu) and Garage (KEY_gar) spent meanwhile.
timed() {
    local k=$1 t=$2 c0 g0 ms; shift 2
    c0=$(busy_ms); g0=$(garage_ms)
    ms=$(val "$@")
    res[$t,$k]+="$ms "
    res[$t,${k}_cpu]+="$(( $(busy_ms) - c0 )) "
    res[$t,${k}_gar]+="$(( $(garage_ms) - g0 )) "
}

echo "# offload benchmark: $ROWS rows, $ROUNDS rounds, $(nproc) cores, $(date -u +%F)"
create_bench_ms
val -c "
CREATE FUNCTION bench_points(t text, n int) RETURNS float LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz := clock_timestamp(); m bigint; r numeric; BEGIN
  EXECUTE format('SELECT max(id) FROM %I', t) INTO m;
  PERFORM setseed(0.42);
  FOR i IN 1..n LOOP EXECUTE format('SELECT amount FROM %I WHERE id = \$1', t) INTO r USING 1 + (random() * (m - 1))::bigint; END LOOP;
  RETURN extract(epoch FROM clock_timestamp() - t0) * 1000 / n; END \$\$;"
{ realistic_rows_sql t_local "$ROWS"; cat <<SQL
ALTER TABLE t_local ADD PRIMARY KEY (id);
CREATE TABLE t_off AS SELECT * FROM t_local;
ALTER TABLE t_off ADD PRIMARY KEY (id);
VACUUM ANALYZE t_local; VACUUM ANALYZE t_off; CHECKPOINT;
SQL
} | val
bytes=$(val -c "SELECT pg_total_relation_size('t_off')")
echo "table + index: $((bytes / 1048576)) MB each; rows md5 equal: $(val -c "SELECT (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t_local t) = (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t_off t)")"

t0=$(date +%s.%N)
val -c "SELECT * FROM yezzey_offload_relation('t_off')" >/dev/null 2>&1
t1=$(date +%s.%N)
remote=$(val -c "SELECT sum(remote_bytes) FROM yezzey_offloaded_relations")
awk -v b="$bytes" -v r="$remote" -v a="$t0" -v z="$t1" 'BEGIN{
  printf "offload: %.1f s, %.0f MB/s of relation data; remote size %.0f MB = %.2f of local\n", z-a, b/1048576/(z-a), r/1048576, r/b }'
val -c "SELECT 'local bytes after offload: ' || local_bytes FROM yezzey_relation_status('t_off')"

declare -A res
scan="SELECT count(*), sum(amount), max(note) FROM %s"
for r in $(seq 1 "$ROUNDS"); do
    order="t_local t_off"; [ $((r % 2)) = 0 ] && order="t_off t_local"
    for t in $order; do
        cold_restart
        res[$t,first]+="$(val -c "SELECT bench_ms('SELECT * FROM $t LIMIT 1')") "
        timed cold $t -c "SELECT bench_ms(format('$scan', '$t'))"
        timed warm $t -c "SELECT bench_ms(format('$scan', '$t'))"
        cold_restart
        timed scold $t -c "SET max_parallel_workers_per_gather = 0" -c "SELECT bench_ms(format('$scan', '$t'))"
        cold_restart
        res[$t,pcold]+="$(val -c "SELECT bench_points('$t', 300)") "
        res[$t,pwarm]+="$(val -c "SELECT bench_points('$t', 300)") "
    done
    echo "round $r done"
done

# The cold scans again with the same objects in a local directory instead
# of Garage: what yezzey itself costs when the object store does not share
# this machine's cores (a real deployment's store is elsewhere).
dir=$YZ_RUN/objects
rm -rf "$dir"; mkdir -p "$dir"
(cd "$YZ_ROOT" && cargo build --release -q -p yezzey-storage --bin yezzey-tool)
tool=$YZ_ROOT/target/release/yezzey-tool
# shellcheck disable=SC1091
source "$YZ_RUN/garage/env"
YEZZEY_STORAGE_URL=$(val -c "SHOW yezzey.storage_url"); export YEZZEY_STORAGE_URL
for n in $("$tool" ls "$(val -c "SELECT system_identifier FROM pg_control_system()")/" | cut -f2); do
    mkdir -p "$dir/$(dirname "$n")"
    "$tool" get-raw "$n" "$dir/$n" >/dev/null
done
[ "$(id -u)" = 0 ] && chown -R "$YZ_OS_USER" "$dir"
val -c "ALTER SYSTEM SET yezzey.storage_url = '$dir'"
for r in $(seq 1 "$ROUNDS"); do
    order="t_local t_off"; [ $((r % 2)) = 0 ] && order="t_off t_local"
    for t in $order; do
        cold_restart
        timed dcold $t -c "SELECT bench_ms(format('$scan', '$t'))"
        cold_restart
        timed dscold $t -c "SET max_parallel_workers_per_gather = 0" -c "SELECT bench_ms(format('$scan', '$t'))"
    done
    echo "directory round $r done"
done
val -c "ALTER SYSTEM RESET yezzey.storage_url"
rm -rf "$dir"

echo
echo "| measurement (median of $ROUNDS) | local | offloaded | offloaded speed vs local |"
echo "|---|---:|---:|---:|"
for m in "cold:full scan, cold cache (ms)" "scold:full scan, cold cache, no parallel workers (ms)" "warm:full scan, warm cache (ms)" "first:first row of a cold scan (ms)" \
         "pcold:index point lookup, cold cache (ms each)" "pwarm:index point lookup, warm cache (ms each)" \
         "dcold:full scan, cold cache, objects in a local directory (ms)" \
         "dscold:full scan, cold cache, objects in a local directory, no parallel workers (ms)"; do
    k=${m%%:*}; label=${m#*:}
    l=$(echo "${res[t_local,$k]}" | median); o=$(echo "${res[t_off,$k]}" | median)
    awk -v l="$l" -v o="$o" -v n="$label" 'BEGIN{printf "| %s | %.2f | %.2f | %.2fx |\n", n, l, o, l/o}'
done

# Where the scans' time goes: both cores' busy time during the query,
# and Garage's share of it (the store shares this machine's cores; a real
# deployment's does not). Busy time over 2 cores bounds how fast a scan can be.
echo
echo "| CPU time of a full scan (median of $ROUNDS, core-seconds) | local: machine busy | offloaded: machine busy | offloaded: of which Garage |"
echo "|---|---:|---:|---:|"
for m in "cold:full scan" "scold:full scan, no parallel workers" "warm:full scan, warm cache (for comparison)" \
         "dcold:full scan, objects in a local directory" "dscold:full scan, objects in a local directory, no parallel workers"; do
    k=${m%%:*}; label=${m#*:}
    l=$(echo "${res[t_local,${k}_cpu]}" | median); o=$(echo "${res[t_off,${k}_cpu]}" | median)
    g=$(echo "${res[t_off,${k}_gar]}" | median)
    awk -v l="$l" -v o="$o" -v g="$g" -v n="$label" 'BEGIN{printf "| %s | %.2f | %.2f | %.2f |\n", n, l/1000, o/1000, g/1000}'
done
