"""Offload and load back against the patched server and Garage: every access
path returns what the local relation did, writes after offload, status,
garbage collection in one cluster, partitions, database-level commands,
bad input. Crashes, lineages and faults have their own files.
"""
import os
import subprocess
import time
import unittest

import yz
from yz import MAIN, make_table


class Offload(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        MAIN.init().start()
        MAIN.q("CREATE EXTENSION yezzey; CREATE EXTENSION amcheck")

    @classmethod
    def tearDownClass(cls):
        MAIN.stop(check=False)

    def access_paths(self, t):
        """Checksums of the same data through every access path."""
        q = MAIN.q
        out = {}
        out["seq"] = MAIN.checksum(t)
        out["parallel"] = q(f"""SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0;
            SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; SET enable_indexscan = off;
            SET enable_bitmapscan = off; SELECT sum(hashtext(t::text)::bigint), count(*) FROM {t} t""")
        out["index"] = q(f"""SET enable_seqscan = off; SET enable_bitmapscan = off;
            SELECT sum(hashtext(t::text)::bigint), count(*) FROM {t} t WHERE id BETWEEN 1000 AND 150000""")
        out["index_only"] = q(f"""SET enable_seqscan = off; SET enable_bitmapscan = off;
            SELECT sum(id::bigint), count(*) FROM {t} WHERE id > 10""")
        out["bitmap"] = q(f"""SET enable_seqscan = off; SET enable_indexscan = off;
            SELECT sum(hashtext(t::text)::bigint), count(*) FROM {t} t WHERE id % 7 = 0 AND id < 180000""")
        out["copy"] = subprocess.run(
            ["bash", "-c", f"psql -XAtq -p {MAIN.port} -c 'COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT' | md5sum"],
            capture_output=True, text=True, env=yz.ENV, check=True).stdout
        q("DROP TABLE IF EXISTS local_dim; CREATE TABLE local_dim AS SELECT g AS id, g % 10 AS k FROM generate_series(1, 200000, 3) g")
        out["join"] = q(f"SELECT sum(hashtext(t::text)::bigint), count(*) FROM {t} t JOIN local_dim d USING (id) WHERE d.k = 3")
        return out

    def test_transparent_reads_restart_and_load_back(self):
        make_table(MAIN, "tr")
        before = self.access_paths("tr")
        rows = MAIN.q("SELECT relation, segments FROM yezzey_offload_relation('tr')").splitlines()
        self.assertIn("tr|1", rows)
        self.assertTrue(any(r.startswith("tr_pkey|") for r in rows), rows)
        state, local, remote = MAIN.q("SELECT state, local_bytes, remote_bytes FROM yezzey_relation_status('tr')").split("|")
        self.assertEqual(state, "offloaded")
        self.assertLess(int(local), 100_000)
        self.assertGreater(int(remote), 0)
        # PostgreSQL's own types where a DBA expects them.
        self.assertEqual(MAIN.q("""SELECT pg_typeof(offload_lsn)::text || ',' || pg_typeof(offloaded_at)::text
                                     FROM yezzey_relation_status('tr')"""), "pg_lsn,timestamp with time zone")
        self.assertEqual(MAIN.q("SELECT pg_typeof(relation)::text || ',' || pg_typeof(offload_lsn)::text FROM yezzey_offloaded_relations LIMIT 1"),
                         "regclass,pg_lsn")
        self.assertEqual(self.access_paths("tr"), before, "after offload")
        MAIN.restart(wipe_cache=True)
        self.assertEqual(self.access_paths("tr"), before, "after restart with an empty cache")
        # The scans above ran in other sessions; the cache's counters are shared.
        self.assertGreater(int(MAIN.q("SELECT value FROM yezzey_remote_stats() WHERE stat = 'cache_shared_misses'")), 0)
        self.assertEqual(MAIN.q("SELECT count(*) FROM verify_heapam('tr')"), "0")
        MAIN.q("SELECT bt_index_check('tr_pkey', true)")
        MAIN.q("SELECT * FROM yezzey_load_relation('tr')")
        self.assertEqual(MAIN.q("SELECT state FROM yezzey_relation_status('tr')"), "local")
        MAIN.restart(wipe_cache=True)
        self.assertEqual(self.access_paths("tr"), before, "after load back")

    def test_writes_after_offload_survive_restart_and_crash(self):
        make_table(MAIN, "wr", rows=100_000)
        MAIN.q("SELECT * FROM yezzey_offload_relation('wr')")
        MAIN.restart()
        MAIN.q("""UPDATE wr SET amount = -1 WHERE id % 500 = 0;
             INSERT INTO wr SELECT g, date '2024-01-01', 1, 'new' FROM generate_series(100001, 101000) g;
             DELETE FROM wr WHERE id BETWEEN 5000 AND 5999;
             VACUUM wr;
             CREATE INDEX wr_day ON wr (day);
             ALTER TABLE wr ADD COLUMN flag bool DEFAULT true;""")
        expect = MAIN.checksum("wr")
        MAIN.crash()
        MAIN.start()
        self.assertEqual(MAIN.checksum("wr"), expect, "after kill -9")
        MAIN.restart()
        self.assertEqual(MAIN.checksum("wr"), expect, "after restart")
        self.assertEqual(MAIN.q("SELECT count(*) FROM verify_heapam('wr')"), "0")
        MAIN.q("SELECT bt_index_check('wr_pkey', true)")
        # ids divisible by 500, less 5000 and 5500 (deleted)
        self.assertEqual(MAIN.q("SELECT count(*) FROM wr WHERE amount = -1"), "198")
        self.assertEqual(MAIN.status("wr")[0], "partially offloaded")

    def test_first_write_marks_segment_durably(self):
        """Reads of a segment without local writes skip the local file; the
        first write must flip that, durably, before its block lands."""
        make_table(MAIN, "lw", rows=100_000)
        MAIN.q("VACUUM (FREEZE) lw; SELECT * FROM yezzey_offload_relation('lw', with_indexes => false)")
        written = "SELECT string_agg(written::text, ',') FROM yezzey_segments() WHERE relfilenode = pg_relation_filenode('lw')"
        self.assertEqual(MAIN.q(written), "false", "fresh offload has no local writes")
        MAIN.q("UPDATE lw SET note = 'changed after offload' WHERE id = 4242; CHECKPOINT")
        # The checkpointer wrote the block, so it recorded the write first.
        self.assertEqual(MAIN.q(written), "true")
        expect = MAIN.checksum("lw")
        # No WAL replays the update after this crash: only the flag makes
        # reads look at the local block instead of the object's old one.
        MAIN.crash()
        MAIN.start()
        self.assertEqual(MAIN.q(written), "true")
        self.assertEqual(MAIN.q("SELECT note FROM lw WHERE id = 4242"), "changed after offload")
        self.assertEqual(MAIN.checksum("lw"), expect, "after kill -9")
        self.assertEqual(MAIN.q("SELECT count(*) FROM verify_heapam('lw')"), "0")

    def test_reading_an_unfrozen_table_does_not_bring_it_back(self):
        """Hint bits set by readers after an offload are not writes: a page
        whose LSN predates the offload holds nothing the object lacks (with
        data checksums, any other change moves the LSN), so the checkpoint
        drops it instead of writing it into the hole. (After a later
        checkpoint, PostgreSQL logs a full page for the first hint bit; that
        page is a local write like any other.)"""
        # No ANALYZE or other read before the offload: no hint bit is set yet.
        MAIN.q("""DROP TABLE IF EXISTS hb;
            CREATE TABLE hb AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g""")
        MAIN.q("SELECT * FROM yezzey_offload_relation('hb')")
        expect = MAIN.checksum("hb")  # sets every tuple's hint bits
        MAIN.q("CHECKPOINT")
        state, local = MAIN.status("hb")
        self.assertEqual(state, "offloaded")
        self.assertLess(local, 64 * 1024)
        MAIN.restart(wipe_cache=True)
        self.assertEqual(MAIN.checksum("hb"), expect)

    def test_damaged_cache_is_an_error_then_cleared(self):
        """With data checksums on, cache hits rely on PostgreSQL's page
        checksum: a damaged cached page must be its ERROR, never rows, and
        yezzey_cache_clear() must mend it from the objects."""
        self.assertEqual(MAIN.q("SHOW data_checksums"), "on")
        make_table(MAIN, "dc", rows=50_000)
        MAIN.q("VACUUM (FREEZE) dc")
        expect = MAIN.checksum("dc")
        MAIN.q("SELECT * FROM yezzey_offload_relation('dc', with_indexes => false)")
        MAIN.restart(wipe_cache=True)
        self.assertEqual(MAIN.checksum("dc"), expect, "first read fills the cache")
        # Flip a byte inside the first block of every cached frame (a page's
        # line pointers: its header still says the page is not new).
        cache = os.path.join(MAIN.data, "pg_yezzey", "pgsql_tmp_cache")
        entries = subprocess.run([yz.TOOL, "cache-entries", cache], capture_output=True, text=True,
                                 check=True).stdout.splitlines()
        self.assertGreater(len(entries), 0)
        for line in entries:
            path, data_at = line.split("\t")
            with open(path, "r+b") as fh:
                at = int(data_at) + 40
                fh.seek(at)
                b = fh.read(1)
                fh.seek(at)
                fh.write(bytes([b[0] ^ 0xFF]))
        MAIN.restart(wipe_cache=False)
        self.assertIn("invalid page", MAIN.error_of("SELECT count(*), sum(hashtext(note)) FROM dc"))
        cleared = int(MAIN.q("SELECT entries FROM yezzey_cache_clear()"))
        self.assertGreaterEqual(cleared, len(entries))
        self.assertEqual(MAIN.checksum("dc"), expect, "after yezzey_cache_clear()")
        self.assertEqual(MAIN.q("SELECT count(*) FROM verify_heapam('dc')"), "0")

    def test_page_pruned_during_the_upload_stays(self):
        """A reader prunes pages after the offload copied them, and a
        checkpoint writes them out before its switch: the pruned pages stay
        local (the object has them unpruned), survive a restart with an
        empty cache, and the next offload uploads them; on a standby too,
        which replayed the pruning and frees its pages as the record says."""
        q = MAIN.q
        q("CREATE EXTENSION IF NOT EXISTS pageinspect")
        for t in ("pr_mirror", "pr"):  # the table last: reading it would prune it
            q(f"""CREATE TABLE {t} (id int PRIMARY KEY, v int, pad text) WITH (fillfactor = 100, autovacuum_enabled = false);
                  INSERT INTO {t} SELECT g, 0, repeat('x', 100) FROM generate_series(1, 30000) g""")
            # Full pages with dead row versions: the next read of each prunes it.
            q(f"UPDATE {t} SET v = 1 WHERE id % 5 = 0")
        dead = "SELECT count(*) FROM heap_page_items(get_raw_page('pr', 0)) WHERE lp_flags = 3"
        self.assertEqual(q(dead), "0")
        standby = MAIN.standby("pr_standby", yz.other_port(1))
        standby.start()
        self.addCleanup(MAIN.psql, "SELECT pg_drop_replication_slot('yz_pr_standby')", check=False)
        self.addCleanup(standby.remove)
        off = subprocess.Popen(["psql", "-XAtq", "-p", str(MAIN.port), "-c",
                                "SET yezzey.fault_injection = 'after_upload:pause=8'",
                                "-c", "SELECT * FROM yezzey_offload_relation('pr', false)"],
                               env=yz.ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        MAIN.wait_for("SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE '%yezzey_offload_relation(''pr''%' AND pid <> pg_backend_pid()")
        time.sleep(3)  # the upload of 4 MB is done; the offload waits before its switch
        q("SELECT count(*) FROM pr")  # prunes the pages
        self.assertNotEqual(q(dead), "0")
        q("CHECKPOINT")  # writes them out under the pending map
        _, err = off.communicate(timeout=120)
        self.assertEqual(off.returncode, 0, err)
        self.assertIn("pausing", err)
        MAIN.restart(wipe_cache=True)
        self.assertNotEqual(q(dead), "0", "a pruned page was lost to the object's older copy")
        standby.caught_up_with(MAIN)
        standby.restart(wipe_cache=True)
        standby.caught_up_with(MAIN)
        self.assertNotEqual(standby.q(dead), "0", "the standby lost a pruned page")
        self.assertEqual(standby.checksum("pr"), MAIN.checksum("pr_mirror"))
        self.assertEqual(MAIN.checksum("pr"), MAIN.checksum("pr_mirror"))
        self.assertEqual(q("SELECT count(*) FROM verify_heapam('pr')"), "0")
        self.assertEqual(MAIN.status("pr")[0], "partially offloaded")
        q("SELECT * FROM yezzey_offload_relation('pr', false)")
        self.assertEqual(MAIN.status("pr"), ("offloaded", 0))
        MAIN.restart(wipe_cache=True)
        self.assertNotEqual(q(dead), "0")
        self.assertEqual(MAIN.checksum("pr"), MAIN.checksum("pr_mirror"))

    def test_unfrozen_table_gets_advice(self):
        """Offloading pages that readers will set hint bits on is allowed,
        with a NOTICE saying so; a frozen table offloads without it."""
        make_table(MAIN, "fz", rows=20_000)
        pages = int(MAIN.q("SELECT pg_relation_size('fz') / 8192"))
        r = MAIN.psql("SELECT * FROM yezzey_offload_relation('fz', with_indexes => false)")
        self.assertIn(f'{pages} of {pages} pages of "fz" are not all-frozen', r.stderr)
        self.assertIn("VACUUM (FREEZE)", r.stderr)
        MAIN.q("SELECT * FROM yezzey_load_relation('fz'); VACUUM (FREEZE) fz")
        r = MAIN.psql("SELECT * FROM yezzey_offload_relation('fz', with_indexes => false)")
        self.assertNotIn("all-frozen", r.stderr)
        self.assertEqual(MAIN.status("fz")[0], "offloaded")

    def test_truncate_drop_and_gc(self):
        make_table(MAIN, "gc1", rows=50_000)
        make_table(MAIN, "gc2", rows=50_000)
        MAIN.q("SELECT * FROM yezzey_offload_relation('gc1'); SELECT * FROM yezzey_offload_relation('gc2')")
        sysid = MAIN.system_id()
        kept_before = MAIN.referenced_objects()
        self.assertTrue(kept_before <= yz.store_yz_objects(sysid))
        MAIN.q("TRUNCATE gc1")
        MAIN.q("DROP TABLE gc2")
        MAIN.q("CHECKPOINT")
        self.assertEqual(MAIN.q("SELECT count(*) FROM gc1"), "0")
        live = MAIN.referenced_objects()
        self.assertLess(len(live), len(kept_before), "TRUNCATE/DROP must release map entries")
        plan = MAIN.q("SELECT count(*) FROM yezzey_gc_plan() WHERE verdict = 'delete'")
        deleted = int(MAIN.q("SELECT deleted_objects FROM yezzey_gc()"))
        self.assertGreater(deleted, 0)
        self.assertEqual(str(deleted), plan, "the plan says what GC does")
        self.assertEqual(MAIN.referenced_objects() - yz.store_yz_objects(sysid), set(), "GC deleted a referenced object")
        self.assertEqual(yz.store_yz_objects(sysid) - MAIN.referenced_objects(), set(), "GC left unreferenced objects")
        # A re-filled truncated table is served locally, not from old objects.
        MAIN.q("INSERT INTO gc1 SELECT g, now(), 0, 'again' FROM generate_series(1, 10) g")
        self.assertEqual(MAIN.q("SELECT count(*) FROM gc1 WHERE note = 'again'"), "10")

    def test_vacuum_truncation_then_reextension(self):
        make_table(MAIN, "vt", rows=60_000)
        MAIN.q("SELECT * FROM yezzey_offload_relation('vt')")
        MAIN.q("DELETE FROM vt WHERE id > 1000; VACUUM vt")
        MAIN.q("INSERT INTO vt SELECT g, date '2025-01-01', 2, 'fresh' FROM generate_series(1001, 60000) g")
        expect = MAIN.q("SELECT count(*), count(*) FILTER (WHERE note = 'fresh') FROM vt")
        self.assertEqual(expect, "60000|59000")
        MAIN.restart()
        self.assertEqual(MAIN.q("SELECT count(*), count(*) FILTER (WHERE note = 'fresh') FROM vt"), expect)
        self.assertEqual(MAIN.q("SELECT count(*) FROM verify_heapam('vt')"), "0")

    def test_partitioned_table(self):
        MAIN.q("""DROP TABLE IF EXISTS events CASCADE;
CREATE TABLE events (id int, day date, v text) PARTITION BY RANGE (day);
CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
INSERT INTO events SELECT g, date '2023-01-01' + (g % 700), md5(g::text) FROM generate_series(1, 100000) g;""")
        expect = MAIN.checksum("events", "id")
        rows = MAIN.q("SELECT relation FROM yezzey_offload_relation('events')").splitlines()
        self.assertIn("events_2023", rows)
        self.assertIn("events_2024", rows)
        MAIN.restart()
        self.assertEqual(MAIN.checksum("events", "id"), expect)

    def test_database_copy_move_and_drop(self):
        """Commands that copy a database's files refuse offloaded sources;
        DROP DATABASE releases the maps, and GC then frees the objects."""
        MAIN.psql("DROP DATABASE IF EXISTS yz_copy")
        src = yz.database_with_offloaded_table(MAIN, "yz_src")
        expect = MAIN.checksum("cold", db="yz_src")
        self.assertGreater(yz.offloaded_files_of_database(MAIN, src), 0)
        e = MAIN.error_of("CREATE DATABASE yz_copy TEMPLATE yz_src STRATEGY FILE_COPY")
        self.assertIn("0A000", e)
        self.assertIn("STRATEGY WAL_LOG", e)
        self.assertEqual(MAIN.q("SELECT count(*) FROM pg_database WHERE datname = 'yz_copy'"), "0")
        # The default strategy reads through the storage manager: same rows,
        # and the copy is local.
        MAIN.q("CREATE DATABASE yz_copy TEMPLATE yz_src")
        self.assertEqual(MAIN.checksum("cold", db="yz_copy"), expect)
        self.assertEqual(MAIN.q("SELECT count(*) FROM yezzey_offloaded_relations", "yz_copy"), "0")
        self.assertEqual(MAIN.q("CREATE EXTENSION amcheck; SELECT count(*) FROM verify_heapam('cold')", "yz_copy"), "0")

        ts = os.path.join(yz.RUN, "ts_move")
        subprocess.run(["rm", "-rf", ts], check=True)
        os.makedirs(ts)
        st = os.stat(MAIN.data)
        os.chown(ts, st.st_uid, st.st_gid)
        MAIN.psql("DROP TABLESPACE IF EXISTS yz_ts")
        MAIN.q(f"CREATE TABLESPACE yz_ts LOCATION '{ts}'")
        e = MAIN.error_of("ALTER DATABASE yz_src SET TABLESPACE yz_ts")
        self.assertIn("0A000", e)
        self.assertIn("ALTER TABLE", e)
        # The way the hint points: a table moves through the storage manager.
        MAIN.q("ALTER TABLE cold SET TABLESPACE yz_ts", "yz_src")
        self.assertEqual(MAIN.checksum("cold", db="yz_src"), expect)
        self.assertEqual(MAIN.q("SELECT state FROM yezzey_relation_status('cold')", "yz_src"), "local")

        MAIN.q("SELECT * FROM yezzey_offload_relation('cold')", "yz_src")
        MAIN.q("DROP DATABASE yz_src")
        self.assertEqual(yz.offloaded_files_of_database(MAIN, src), 0, "DROP DATABASE must release its maps")
        MAIN.q("SELECT * FROM yezzey_gc()")
        self.assertEqual(yz.store_yz_objects(MAIN.system_id()), MAIN.referenced_objects())
        MAIN.q("DROP DATABASE yz_copy; DROP TABLESPACE yz_ts")

    def test_gc_forgets_maps_of_vanished_databases(self):
        """A database dropped while yezzey was not loaded leaves its maps:
        GC forgets them and frees their objects."""
        gone = yz.database_with_offloaded_table(MAIN, "yz_gone")
        names = MAIN.referenced_objects()
        auto = os.path.join(MAIN.data, "postgresql.auto.conf")
        with open(auto) as f:
            saved = f.read()
        try:
            # (ALTER SYSTEM would write '""', a library with an empty name.)
            with open(auto, "a") as f:
                f.write("\nshared_preload_libraries = ''\n")
            MAIN.restart(wipe_cache=False)
            MAIN.q("DROP DATABASE yz_gone")
        finally:
            with open(auto, "w") as f:
                f.write(saved)
            MAIN.restart(wipe_cache=False)
        self.assertGreater(yz.offloaded_files_of_database(MAIN, gone), 0)
        self.assertEqual(MAIN.q("SELECT deleted_objects > 0 FROM yezzey_gc(dry_run => true)"), "t")
        self.assertGreater(yz.offloaded_files_of_database(MAIN, gone), 0, "a dry run must not forget maps")
        MAIN.q("SELECT * FROM yezzey_gc()")
        self.assertEqual(yz.offloaded_files_of_database(MAIN, gone), 0)
        self.assertLess(len(MAIN.referenced_objects()), len(names))
        self.assertEqual(yz.store_yz_objects(MAIN.system_id()), MAIN.referenced_objects())

    def test_gc_keeps_retired_objects_for_retention(self):
        """Objects whose last reference was dropped stay for
        yezzey.gc_retention (backups, PITR), then GC deletes them."""
        make_table(MAIN, "ret", rows=20_000)
        MAIN.q("VACUUM (FREEZE) ret; SELECT * FROM yezzey_offload_relation('ret')")
        before = MAIN.referenced_objects()
        MAIN.q("SELECT * FROM yezzey_load_relation('ret')")
        gone = before - MAIN.referenced_objects()
        self.assertTrue(gone)
        r = MAIN.psql("SET yezzey.gc_retention = '1h'; SELECT held_objects FROM yezzey_gc()")
        self.assertGreaterEqual(int(r.stdout.strip()), len(gone))
        self.assertIn("yezzey.gc_retention", r.stderr)
        reasons = MAIN.q("SET yezzey.gc_retention = '1h'; SELECT DISTINCT reason FROM yezzey_gc_plan() WHERE verdict = 'hold'")
        self.assertIn("within yezzey.gc_retention", reasons)
        sysid = MAIN.system_id()
        self.assertTrue(gone <= yz.store_yz_objects(sysid), "GC deleted objects within the retention period")
        MAIN.q("SELECT * FROM yezzey_gc()")  # this cluster's setting: 0
        self.assertEqual(gone & yz.store_yz_objects(sysid), set())
        self.assertEqual(MAIN.q("SELECT count(*) FROM yezzey_gc_plan() WHERE verdict = 'hold'"), "0")

    def test_bad_input(self):
        self.assertIn("42P01", MAIN.error_of("SELECT yezzey_offload_relation('no_such_table')"))
        e = MAIN.error_of("SELECT yezzey_offload_relation('pg_class')")
        self.assertIn("system catalog", e)
        e = MAIN.psql("CREATE TEMP TABLE tmp2 (a int); SELECT yezzey_offload_relation('tmp2')", check=False).stderr
        self.assertIn("temporary", e)
        MAIN.q("DROP TABLE IF EXISTS unl; CREATE UNLOGGED TABLE unl AS SELECT 1 AS a")
        e = MAIN.error_of("SELECT yezzey_offload_relation('unl')")
        self.assertIn("0A000", e)
        self.assertIn("SET LOGGED", e)
        MAIN.q("DROP VIEW IF EXISTS v1; CREATE VIEW v1 AS SELECT 1")
        self.assertIn("42809", MAIN.error_of("SELECT yezzey_offload_relation('v1')"))
        self.assertIn("42809", MAIN.error_of("SELECT * FROM yezzey_relation_status('v1')"))
        make_table(MAIN, "twice", rows=1000)
        MAIN.q("SELECT * FROM yezzey_offload_relation('twice')")
        # Offloading it again with nothing changed uploads nothing.
        before = yz.store_yz_objects(MAIN.system_id())
        r = MAIN.psql("SELECT count(*) FROM yezzey_offload_relation('twice') WHERE local_bytes > 0")
        self.assertIn("unchanged since", r.stderr)
        self.assertEqual(r.stdout.strip(), "0")
        self.assertEqual(yz.store_yz_objects(MAIN.system_id()), before)
        e = MAIN.error_of("SELECT yezzey_forget_member('not-an-id')")
        self.assertIn("22023", e)
        e = MAIN.error_of(f"SELECT yezzey_forget_member('{MAIN.member()}')")
        self.assertIn("is this cluster", e)
        MAIN.q("DROP ROLE IF EXISTS nobody; CREATE ROLE nobody LOGIN")
        r = subprocess.run(["psql", "-XAtq", "-p", str(MAIN.port), "-U", "nobody", "-d", "postgres",
                            "-c", "SELECT yezzey_offload_relation('twice')"],
                           capture_output=True, text=True, env=yz.ENV)
        self.assertIn("permission denied", r.stderr)


if __name__ == "__main__":
    yz.run(__name__)
