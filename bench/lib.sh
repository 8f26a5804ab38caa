# Sourced by every benchmark after it has read its arguments: the project's
# settings, a run directory of the benchmarks' own (apart from the demo's and
# the tests'), the server's environment, and the helpers the reports share.
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
export YEZZEY_RUN=$YZ_CACHE/bench-run
YZ_RUN=$YEZZEY_RUN
S=$YZ_ROOT/scripts
mkdir -p "$YZ_RUN"; [ "$(id -u)" = 0 ] && chown "$YZ_OS_USER" "$YZ_RUN"
eval "$(bash "$S/pg.sh" env)"

# median: the median of the numbers on stdin (separated by spaces or lines).
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }
# since T0: seconds elapsed since T0 (a value of now).
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{print b - a}'; }
# busy_ms: the whole machine's busy CPU time so far, in ms (/proc/stat).
busy_ms() { awk -v hz="$(getconf CLK_TCK)" '/^cpu /{print int(($2+$3+$4+$7+$8+$9) * 1000 / hz)}' /proc/stat; }
# realistic_rows_sql TABLE ROWS: SQL creating TABLE with ROWS realistic rows
# (bigint id, date, int customer, numeric amount, status text, a note of
# 0–60 characters in four styles), the data every benchmark measures.
realistic_rows_sql() {
    cat <<SQL
CREATE TABLE $1 (id bigint, placed date, customer int, amount numeric(10,2), status text, note text);
INSERT INTO $1
SELECT g, date '2020-01-01' + (g % 1500)::int, ((g * 7919) % 500000)::int, ((g * 31) % 1000000) / 100.0,
       (ARRAY['shipped','pending','returned','cancelled','refunded'])[1 + g % 5],
       CASE g % 4 WHEN 0 THEN 'gift wrap, leave at the back door ' || g % 97
                  WHEN 1 THEN md5(g::text)
                  WHEN 2 THEN repeat('priority ', (1 + g % 3)::int) || (g % 1000)::text
                  ELSE '' END
  FROM generate_series(1::bigint, $2) g;
SQL
}

# One cluster and Garage for a benchmark, stopped when it exits; `val` runs
# psql against the cluster.
start_cluster_and_garage() {
    bash "$S/garage.sh" start >/dev/null
    bash "$S/pg.sh" init >/dev/null
    bash "$S/pg.sh" start
    trap 'bash "$S/pg.sh" stop >/dev/null 2>&1; bash "$S/garage.sh" stop >/dev/null 2>&1' EXIT
}
val() { psql -XAtq -v ON_ERROR_STOP=1 "$@"; }
# create_bench_ms: yezzey, and bench_ms(q, n): the milliseconds running
# query q n times takes, measured in the server.
create_bench_ms() {
    val -c "CREATE EXTENSION yezzey" -c "
CREATE FUNCTION bench_ms(q text, n int DEFAULT 1) RETURNS float LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz := clock_timestamp(); BEGIN
  FOR i IN 1..n LOOP EXECUTE q; END LOOP;
  RETURN extract(epoch FROM clock_timestamp() - t0) * 1000; END \$\$;"
}
drop_caches() {
    sync
    echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(could not drop the OS page cache: not root?)" >&2
}
# cold_restart: the cluster restarted with yezzey's cache and the OS page cache empty.
cold_restart() {
    bash "$S/pg.sh" stop
    rm -rf "$YZ_RUN/pgdata/pg_yezzey/pgsql_tmp_cache"
    drop_caches
    bash "$S/pg.sh" start
}
