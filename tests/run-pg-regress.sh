#!/usr/bin/env bash
# PostgreSQL's own regression suite (the standard installcheck schedule, from
# the patched source tree) against a server running with yezzey preloaded,
# so every permanent relation the suite touches goes through yezzey's smgr.
source "$(dirname "$0")/lib.sh"
fresh_cluster
trap stop_cluster EXIT
[ "$(q -c 'SHOW shared_preload_libraries')" = yezzey ] || { echo "yezzey is not preloaded"; exit 1; }
PG_BUILD=$YZ_CACHE/build/$(basename "$PG_PREFIX")
regress=$PG_BUILD/src/test/regress
[ "$(id -u)" = 0 ] && chown -R "$YZ_OS_USER" "$regress"
if ! as_pg make -s -C "$regress" installcheck PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER=postgres >"$YZ_RUN/installcheck.log" 2>&1; then
    tail -40 "$YZ_RUN/installcheck.log"
    head -100 "$regress/regression.diffs" 2>/dev/null
    exit 1
fi
grep -E "^# All [0-9]+ tests passed" "$YZ_RUN/installcheck.log" || tail -3 "$YZ_RUN/installcheck.log"
