-- What only superusers may run (loaded last by ext/src/lib.rs). The
-- functions check it themselves as well, with a hint.
REVOKE EXECUTE ON FUNCTION yezzey_offload_relation(regclass, bool) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION yezzey_load_relation(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION yezzey_gc(bool) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION yezzey_gc_plan() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION yezzey_forget_member(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION yezzey_cache_clear() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION yezzey_backup_expire(pg_lsn) FROM PUBLIC;
