-- The pass-through storage manager: every permanent relation goes through
-- yezzey's smgr, temporary relations go straight to md, and the data is
-- unchanged whichever way it travels.
CREATE EXTENSION yezzey;
CREATE EXTENSION pg_buffercache;
SELECT yezzey_version() ~ '^[0-9]+\.[0-9]+\.[0-9]+$' AS version_ok;
SHOW shared_preload_libraries;

SELECT yezzey_smgr_stats_reset();
CREATE TABLE hook_t AS
    SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;
SELECT md5(string_agg(v, ',' ORDER BY id)) AS before FROM hook_t \gset
-- Creating and filling the table went through yezzey.
SELECT call, count > 0 AS called FROM yezzey_smgr_stats()
 WHERE call IN ('open', 'create', 'nblocks', 'extend', 'zeroextend') ORDER BY call;
SELECT via_yezzey > 0 AS permanent_via_yezzey, via_md AS temp_via_md FROM yezzey_smgr_opened();

-- Evict the table from shared buffers so the next scan reads through the hook.
SELECT yezzey_smgr_stats_reset();
SELECT bool_and(pg_buffercache_evict(bufferid)) AS evicted
  FROM pg_buffercache WHERE relfilenode = pg_relation_filenode('hook_t');
SELECT md5(string_agg(v, ',' ORDER BY id)) = :'before' AS same_data FROM hook_t;
SELECT count > 0 AS reads_via_yezzey FROM yezzey_smgr_stats() WHERE call = 'readv';

-- Index build, index scan, VACUUM truncation and DROP all work through it.
SELECT yezzey_smgr_stats_reset();
CREATE INDEX hook_t_id ON hook_t (id);
SET enable_seqscan = off;
SELECT v = md5('4242') AS index_lookup FROM hook_t WHERE id = 4242;
RESET enable_seqscan;
DELETE FROM hook_t WHERE id > 100;
VACUUM hook_t;
SELECT count(*) FROM hook_t;
SELECT pg_relation_size('hook_t') < 8192 * 5 AS truncated;
DROP TABLE hook_t;
SELECT call, count > 0 AS called FROM yezzey_smgr_stats()
 WHERE call IN ('truncate', 'unlink', 'registersync', 'writev') ORDER BY call;

-- Temporary relations bypass yezzey.
SELECT yezzey_smgr_stats_reset();
CREATE TEMP TABLE hook_tmp AS SELECT g FROM generate_series(1, 100) g;
SELECT sum(g) FROM hook_tmp;
SELECT via_md > 0 AS temp_via_md FROM yezzey_smgr_opened();
SELECT count FROM yezzey_smgr_stats() WHERE call = 'create';
