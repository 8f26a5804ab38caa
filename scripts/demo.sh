#!/usr/bin/env bash
# The demo: runs against the cluster and Garage that scripts/setup.sh started.
source "$(dirname "$0")/common.sh"
eval "$(bash "$YZ_ROOT/scripts/pg.sh" env)"
source "$YZ_RUN/garage/env"
TOOL=$YZ_ROOT/target/release/yezzey-tool
q() { psql -XAtq -v ON_ERROR_STOP=1 "$@"; }
say() { printf '\n\033[1;34m-- %s\033[0m\n' "$*"; }

say "yezzey is preloaded and its storage manager serves every permanent relation"
q -c "SET client_min_messages = warning" -c "CREATE EXTENSION IF NOT EXISTS yezzey"
q -c "SELECT 'yezzey ' || yezzey_version()"
q -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS demo_events" -c "
CREATE TABLE demo_events AS
SELECT g AS id, date '2023-01-01' + (g % 365) AS day, (g::bigint * 7919) % 100000 AS amount,
       repeat(md5(g::text), 1 + g % 4) AS note
  FROM generate_series(1, 300000) g"
q -c "SELECT yezzey_smgr_stats_reset()" -c "SELECT count(*), sum(amount) FROM demo_events" >/dev/null
q -P footer=off -c "SELECT call, count FROM yezzey_smgr_stats() WHERE count > 0"

say "the table's segment file as a yezzey object in Garage (zstd + AES-256-GCM)"
q -c "CHECKPOINT"
file=$(q -c "SELECT current_setting('data_directory') || '/' || pg_relation_filepath('demo_events')")
keyfile=$YZ_RUN/demo.key
[ -f "$keyfile" ] || "$TOOL" keygen > "$keyfile"
url=s3://$YEZZEY_BUCKET/demo
name=demo/$(basename "$file").0
"$TOOL" --url "$url" --key-file "$keyfile" put "$file" "$name" >/dev/null
"$TOOL" --url "$url" --key-file "$keyfile" header "$name"
"$TOOL" --url "$url" --key-file "$keyfile" get "$name" "$YZ_RUN/demo.back"
if cmp -s "$file" "$YZ_RUN/demo.back"; then
    echo "read back from Garage: identical to the local file ($(stat -c %s "$file") bytes)"
else
    echo "read back differs from the local file"; exit 1
fi
rm -f "$YZ_RUN/demo.back"
