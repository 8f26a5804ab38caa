#!/usr/bin/env bash
# The extension's SQL regression tests (tests/regress), with pg_regress,
# against a fresh cluster with yezzey preloaded.
source "$(dirname "$0")/lib.sh"
fresh_cluster
trap stop_cluster EXIT
out=$YZ_RUN/regress-out
rm -rf "$out"; mkdir -p "$out"
tests=$(cd "$YZ_ROOT/tests/regress/sql" && ls *.sql | sed 's/\.sql$//')
"$(dirname "$(dirname "$("$PG_CONFIG" --pgxs)")")/test/regress/pg_regress" \
    --inputdir="$YZ_ROOT/tests/regress" --outputdir="$out" \
    --bindir="$PG_PREFIX/bin" --host="$PGHOST" --port="$PGPORT" --user=postgres \
    --dbname=yezzey_regress $tests || { cat "$out/regression.diffs" 2>/dev/null | head -80; exit 1; }
