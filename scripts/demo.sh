#!/usr/bin/env bash
# The demo: offload old partitions of a real table to the local Garage and
# query across hot and cold partitions. Runs against the cluster and Garage
# that scripts/setup.sh started.
source "$(dirname "$0")/common.sh"
eval "$(bash "$YZ_ROOT/scripts/pg.sh" env)"
q() { psql -X -q -v ON_ERROR_STOP=1 -P footer=off "$@"; }
val() { psql -XAtq -v ON_ERROR_STOP=1 "$@"; }
say() { printf '\n\033[1;34m-- %s\033[0m\n' "$*"; }

say "a table partitioned by quarter: 2.4 million realistic rows"
q -c "SET client_min_messages = warning" -c "CREATE EXTENSION IF NOT EXISTS yezzey" -c "DROP TABLE IF EXISTS orders"
q <<'SQL'
CREATE TABLE orders (id bigint, placed date, customer int, amount numeric(10,2), status text, note text)
    PARTITION BY RANGE (placed);
CREATE TABLE orders_2024q1 PARTITION OF orders FOR VALUES FROM ('2024-01-01') TO ('2024-04-01');
CREATE TABLE orders_2024q2 PARTITION OF orders FOR VALUES FROM ('2024-04-01') TO ('2024-07-01');
CREATE TABLE orders_2024q3 PARTITION OF orders FOR VALUES FROM ('2024-07-01') TO ('2024-10-01');
CREATE TABLE orders_2024q4 PARTITION OF orders FOR VALUES FROM ('2024-10-01') TO ('2025-01-01');
INSERT INTO orders
SELECT g, date '2024-01-01' + (g % 366)::int, (g * 7919) % 50000, ((g * 31) % 100000) / 100.0,
       (ARRAY['shipped','pending','returned','cancelled'])[1 + g % 4],
       CASE WHEN g % 3 = 0 THEN 'gift wrap; leave at door ' || g % 97 ELSE md5(g::text) END
  FROM generate_series(1::bigint, 2400000) g;
CREATE INDEX ON orders (customer);
-- Frozen before offload, so that readers setting hint bits do not write pages back.
VACUUM (FREEZE, ANALYZE) orders;
SQL
answer="SELECT date_trunc('quarter', placed)::date AS quarter, count(*), sum(amount), count(DISTINCT customer)
          FROM orders GROUP BY 1 ORDER BY 1"
point="SELECT count(*), sum(amount) FROM orders WHERE customer = 4242"
before=$(val -c "$answer" -c "$point" | md5sum)
q -c "SELECT relname AS partition, pg_size_pretty(pg_relation_size(oid)) AS size FROM pg_class WHERE relname LIKE 'orders_2024q_' ORDER BY 1"

say "offload the three cold quarters (tables and their indexes)"
q -c "SELECT relation, segments, pg_size_pretty(local_bytes) AS was_local, pg_size_pretty(remote_bytes) AS now_remote
        FROM yezzey_offload_relation('orders_2024q1')
      UNION ALL SELECT relation, segments, pg_size_pretty(local_bytes), pg_size_pretty(remote_bytes) FROM yezzey_offload_relation('orders_2024q2')
      UNION ALL SELECT relation, segments, pg_size_pretty(local_bytes), pg_size_pretty(remote_bytes) FROM yezzey_offload_relation('orders_2024q3')" 2>/dev/null

say "local disk freed, bytes in Garage"
q -c "SELECT p AS partition, s.state, pg_size_pretty(s.logical_bytes) AS logical, pg_size_pretty(s.local_bytes) AS on_local_disk,
             pg_size_pretty(s.remote_bytes) AS in_object_storage
        FROM unnest(ARRAY['orders_2024q1','orders_2024q2','orders_2024q3','orders_2024q4']) p,
             LATERAL yezzey_relation_status(p::regclass) s ORDER BY 1"

say "queries across hot and cold partitions, after a restart with an empty cache"
bash "$YZ_ROOT/scripts/pg.sh" stop
rm -rf "$YZ_RUN/pgdata/pg_yezzey/pgsql_tmp_cache"
bash "$YZ_ROOT/scripts/pg.sh" start
q -c "$answer"
q -c "$point"
after=$(val -c "$answer" -c "$point" | md5sum)
if [ "$before" = "$after" ]; then
    echo "identical answers before and after offload"
else
    echo "answers differ after offload"; exit 1
fi
q -c "SELECT * FROM yezzey_offloaded_relations ORDER BY relation::text"
