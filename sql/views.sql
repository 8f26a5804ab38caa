-- Views of the yezzey extension (loaded by ext/src/lib.rs with pgrx's
-- extension_sql_file!). Every WAL position is a pg_lsn, every time a
-- timestamptz, every relation a regclass.

CREATE VIEW yezzey_offloaded_relations AS
SELECT pg_filenode_relation(CASE WHEN o.tablespace = (SELECT dattablespace FROM pg_database
                                                      WHERE datname = current_database())
                                 THEN 0 ELSE o.tablespace END, o.relfilenode) AS relation,
       o.segments, o.raw_bytes, o.remote_bytes, o.evicted, o.offload_lsn
  FROM yezzey_offloaded() o;
COMMENT ON VIEW yezzey_offloaded_relations IS
  'Relations of this database whose files are (partly) in object storage';

CREATE VIEW yezzey_lineage AS
SELECT member, parent, is_self, state, origin, published_at, timeline, lsn, held_objects, forgotten_by,
       in_recovery, slot
  FROM yezzey_lineage_members();
COMMENT ON VIEW yezzey_lineage IS
  'The clusters sharing this cluster''s objects (origin, restored copies, clones, promoted standbys, standbys publishing their replay position), as published in the object store';

CREATE VIEW yezzey_backups AS
SELECT label, start_lsn, stop_lsn, timeline, started_at, stopped_at, holds_objects, status
  FROM yezzey_backups_list();
COMMENT ON VIEW yezzey_backups IS
  'Base backups of this cluster registered when they started, and what keeps the objects they need';
