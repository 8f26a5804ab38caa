#!/usr/bin/env bash
# Runs every test: the storage core's unit tests, its integration tests
# against a real Garage server, clippy, the extension's SQL tests, the
# integration tests (offload and read paths, crashes, lineages of standbys,
# backups and clones, faults and full disks, yezzey's own files failing),
# and PostgreSQL's own
# regression suite against the patched server with yezzey preloaded.
# Sets up whatever is missing first; stops the servers it started.
source "$(dirname "$0")/common.sh"
S=$YZ_ROOT/scripts

bash "$S/setup.sh" --no-demo

# The test servers get their own run directory and ports, apart from the
# demo's (which may still be running from the set-up command).
export YEZZEY_RUN=$YZ_CACHE/test-run
export YEZZEY_PGPORT=${YEZZEY_TEST_PGPORT:-25517}
export YEZZEY_GARAGE_S3_PORT=${YEZZEY_TEST_GARAGE_S3_PORT:-25530}
export YEZZEY_GARAGE_RPC_PORT=${YEZZEY_TEST_GARAGE_RPC_PORT:-25531}
export YEZZEY_GARAGE_ADMIN_PORT=${YEZZEY_TEST_GARAGE_ADMIN_PORT:-25533}
YZ_RUN=$YEZZEY_RUN
rm -rf "$YZ_RUN"
mkdir -p "$YZ_RUN"
[ "$(id -u)" = 0 ] && chown "$YZ_OS_USER" "$YZ_RUN"

cleanup() {
    bash "$S/pg.sh" stop >/dev/null 2>&1 || true
    bash "$S/garage.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

bash "$S/garage.sh" start
# shellcheck disable=SC1091
source "$YZ_RUN/garage/env"
export YEZZEY_GARAGE_CTL="$S/garage.sh"
export YEZZEY_BARMAN_BIN="$BARMAN_VENV/bin"

passed=0; failed=0; failures=()
suite() {
    local name=$1; shift
    log "suite: $name"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); failures+=("$name")
    fi
}

suite "storage core (cargo test: unit + Garage integration)" \
    cargo test --release -q -p yezzey-storage
suite "clippy (every crate and target, warnings are errors)" \
    bash -c "PG_CONFIG=$PG_CONFIG cargo clippy --release -q -p yezzey-storage -p yezzey-bench -p yezzey-smgr-shim --all-targets -- -D warnings \
             && PG_CONFIG=$PG_CONFIG cargo clippy --release -q -p yezzey --lib -- -D warnings"
suite "extension SQL tests (pg_regress, yezzey preloaded)" bash "$YZ_ROOT/tests/run-sql-tests.sh"
suite "extension refuses to load without shared_preload_libraries" bash "$YZ_ROOT/tests/test-preload-required.sh"
suite "offload and read paths, writes, GC in one cluster (tests/test_offload.py)" \
    python3 "$YZ_ROOT/tests/test_offload.py"
suite "crashes: kill -9 at every step and at random, descriptor limits (tests/test_crash.py)" \
    python3 "$YZ_ROOT/tests/test_crash.py"
suite "lineages: standbys, restored backups, clones, promotion, PITR (tests/test_lineage.py)" \
    python3 "$YZ_ROOT/tests/test_lineage.py"
suite "faults: store down, frozen, refusing; full disks (tests/test_faults.py)" \
    python3 "$YZ_ROOT/tests/test_faults.py"
suite "backups: pg_basebackup and Barman carry local bytes only; GC knows every backup (tests/test_backup.py)" \
    python3 "$YZ_ROOT/tests/test_backup.py"
suite "yezzey's own files failing, damaged state, copies GC must know about (tests/test_state.py)" \
    python3 "$YZ_ROOT/tests/test_state.py"
suite "offloading again what changed: rounds, standby, backup, kill -9 (tests/test_reoffload.py)" \
    python3 "$YZ_ROOT/tests/test_reoffload.py"
suite "PostgreSQL regression suite (installcheck, yezzey preloaded)" bash "$YZ_ROOT/tests/run-pg-regress.sh"

echo
for f in "${failures[@]}"; do echo "FAILED: $f"; done
echo "suites: $passed passed, $failed failed"
[ "$failed" = 0 ]
