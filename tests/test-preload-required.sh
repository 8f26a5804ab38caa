#!/usr/bin/env bash
# Without shared_preload_libraries, yezzey must refuse to load with a clear
# error and a hint, and the server must keep working.
source "$(dirname "$0")/lib.sh"
fresh_cluster --no-yezzey
trap stop_cluster EXIT
fail() { echo "FAIL: $*"; exit 1; }
err=$(q -c "CREATE EXTENSION yezzey" 2>&1) && fail "CREATE EXTENSION succeeded without preload"
echo "$err" | grep -q "yezzey must be loaded via shared_preload_libraries" || fail "unexpected error: $err"
err=$(q -c "\set VERBOSITY verbose" -c "LOAD 'yezzey'" 2>&1) && fail "LOAD succeeded without preload"
echo "$err" | grep -q "55000" || fail "expected SQLSTATE 55000 (object_not_in_prerequisite_state): $err"
echo "$err" | grep -q "HINT:  Add 'yezzey' to shared_preload_libraries" || fail "missing hint: $err"
[ "$(q -c 'SELECT 1 + 1')" = 2 ] || fail "server unusable after the refused load"
echo "ok: yezzey refuses to load outside shared_preload_libraries"
