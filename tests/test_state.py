"""yezzey's own steps failing half way, the copies GC must know about, and
damaged local state (issue 19): a map directory that refuses writes
(permissions, a full file system), a shared map far past its old fixed
size, a map limit reached, wal_level = minimal, checksums enabled after an
offload, backups whose stop was not recorded or that a crash interrupted,
delayed, cascaded and paused standbys, pg_receivewal on a slot, damaged or
missing map files, damaged and deleted objects, and commands that are not
transactions.

Every test compares full-table checksums with a local mirror (the same rows
in a table that is never offloaded, changed by the same statements) in
every cluster involved, after a restart with an empty cache, and after GC.
"""
import os
import random
import re
import subprocess
import tempfile
import time
import unittest

import yz
from yz import MAIN, Cluster, make_table

MAPS = os.path.join(MAIN.data, "pg_yezzey", "map")


def objects_of(c, table, db="postgres"):
    return set(c.q(f"""SELECT object FROM yezzey_segments()
                         WHERE relfilenode = pg_relation_filenode('{table}')""", db).split())


def in_store(c):
    return yz.store_yz_objects(c.system_id())


def kept_reasons(c, names):
    """Why GC keeps these objects (for a failing assertion's message)."""
    if not names:
        return ""
    listed = ",".join(f"'{n}'" for n in sorted(names)[:5])
    return "\n" + c.q(f"SELECT object, verdict, reason FROM yezzey_gc_plan() WHERE object IN ({listed})")


def mirrored_table(c, name, rows):
    """`name` and its local mirror `name_m` with the same rows; `name` is
    frozen (ready to offload)."""
    make_table(c, name, rows=rows)
    c.q(f"DROP TABLE IF EXISTS {name}_m; CREATE TABLE {name}_m AS SELECT * FROM {name}; "
        f"VACUUM (FREEZE) {name}")


def both(c, sql, name):
    """Runs a statement on a table and on its mirror (`{t}` in `sql`)."""
    c.q(sql.format(t=name))
    c.q(sql.format(t=name + "_m"))


def run_as_pg(*cmd, check=True):
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True, check=check)


class Checks(unittest.TestCase):
    """A fresh main cluster per class, and the comparisons every test ends with."""

    @classmethod
    def setUpClass(cls):
        MAIN.init().start()
        MAIN.q("CREATE EXTENSION yezzey; CHECKPOINT")

    @classmethod
    def tearDownClass(cls):
        MAIN.stop(check=False)

    def same_everywhere(self, clusters, tables, gc=True):
        """Every table equals its mirror in every cluster; again after a
        restart with an empty cache; and after GC (in the first cluster)."""
        def compare(when):
            for c in clusters:
                for t in tables:
                    self.assertEqual(c.checksum(t), c.checksum(t + "_m"), f"{t} on {c.name} {when}")
        primary = clusters[0]
        for c in clusters[1:]:
            c.caught_up_with(primary)
        compare("as it is")
        for c in clusters:
            c.restart(wipe_cache=True)
        for c in clusters[1:]:
            c.caught_up_with(primary)
        compare("after a restart with an empty cache")
        if gc:
            primary.q("SELECT * FROM yezzey_gc()")
            for c in clusters:
                c.q("SELECT yezzey_cache_clear()")
            compare("after GC")


class RefusedWrites(Checks):
    """A primary and a streaming standby; the primary's map directory
    refuses writes, by its permissions and by a full file system."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        assert os.path.isdir(MAPS), "the first checkpoint writes the manifest"
        cls.standby = MAIN.standby("rw_standby", yz.other_port(1))
        cls.standby.start()

    @classmethod
    def tearDownClass(cls):
        os.chmod(MAPS, 0o700)
        subprocess.run(["umount", MAPS], capture_output=True)
        cls.standby.remove()
        super().tearDownClass()

    def test_unwritable_map_directory(self):
        """The DBA's sequence on a primary whose pg_yezzey/map refuses
        writes (EACCES): offload, write, checkpoint, GC, crash. Before:
        the offload only warned, dropped its upload intents, and GC deleted
        the objects the standby and the crash-recovered primary read."""
        s = self.standby
        mirrored_table(MAIN, "rw", 60_000)
        os.chmod(MAPS, 0o500)
        try:
            r = MAIN.psql("SELECT * FROM yezzey_offload_relation('rw')")
            self.assertIn("could not write the map file", r.stderr)
            self.assertEqual(MAIN.status("rw")[0], "offloaded")
            self.assertLess(MAIN.status("rw")[1], 64 * 1024, "eviction does not need the map file")
            objects = objects_of(MAIN, "rw")
            s.caught_up_with(MAIN)
            self.assertEqual(s.status("rw")[0], "offloaded")
            # GC goes by the shared map: nothing the record names is deleted.
            MAIN.q("SELECT * FROM yezzey_gc()")
            self.assertTrue(objects <= in_store(MAIN), "GC deleted objects of a logged offload")
            self.assertEqual(s.checksum("rw"), MAIN.checksum("rw_m"))
            # The first write to the offloaded segment cannot be recorded in
            # its file either: the shared map has it, WAL replays it.
            both(MAIN, "UPDATE {t} SET note = 'after' WHERE id % 50 = 0", "rw")
            # A checkpoint writes the updated pages (marking their segment
            # written in the shared map only) and cannot write the map
            # files: it fails, keeping the WAL that has both.
            r = MAIN.psql("CHECKPOINT", check=False)
            self.assertNotEqual(r.returncode, 0, "a checkpoint completed without the map files")
            self.assertIn("cannot write its map files", MAIN.log_tail(60))
            self.assertEqual(MAIN.checksum("rw"), MAIN.checksum("rw_m"))
            both(MAIN, "UPDATE {t} SET amount = amount + 1 WHERE id % 70 = 0", "rw")
            # A crash now: recovery replays the offload and the writes; its
            # end-of-recovery checkpoint cannot write the files and fails,
            # clearly, until they can be written.
            MAIN.crash()
            r = MAIN.start(check=False)
            self.assertNotEqual(r.returncode, 0, "recovery completed without writing the map files")
            self.assertIn("cannot write its map files", MAIN.log_tail(80))
        finally:
            os.chmod(MAPS, 0o700)
        MAIN.start()
        self.assertEqual(MAIN.status("rw")[0], "partially offloaded")
        self.assertTrue(os.path.exists(os.path.join(MAPS, "manifest")))
        self.assertEqual(MAIN.checksum("rw"), MAIN.checksum("rw_m"))
        MAIN.q("SELECT * FROM yezzey_gc()")
        self.assertTrue(objects <= in_store(MAIN))
        self.same_everywhere([MAIN, s], ["rw"])

    def test_reoffload_with_unwritable_map_directory(self):
        """Offloading again what changed while pg_yezzey/map refuses writes
        (EACCES): the re-offload is in effect on the primary and the
        standby; GC keeps the new objects and, for the standby and the
        crash-recovered primary, the superseded ones until the record
        retired them durably; a crash replays it once the directory can be
        written."""
        s = self.standby
        mirrored_table(MAIN, "rr", 60_000)
        MAIN.q("SELECT * FROM yezzey_offload_relation('rr', false)")
        both(MAIN, "UPDATE {t} SET note = 'changed' WHERE id % 40 = 0", "rr")
        MAIN.q("CHECKPOINT")
        self.assertEqual(MAIN.status("rr")[0], "partially offloaded")
        before = objects_of(MAIN, "rr")
        os.chmod(MAPS, 0o500)
        try:
            r = MAIN.psql("SELECT * FROM yezzey_offload_relation('rr', false)")
            self.assertIn("could not write the map file", r.stderr)
            self.assertEqual(MAIN.status("rr"), ("offloaded", 0))
            after = objects_of(MAIN, "rr")
            self.assertTrue(after and not after & before, (before, after))
            s.caught_up_with(MAIN)
            self.assertEqual(s.status("rr")[0], "offloaded")
            self.assertEqual(s.checksum("rr"), MAIN.checksum("rr_m"))
            # GC goes by the shared map, and keeps the superseded objects
            # while their retirement cannot be written.
            MAIN.q("SELECT * FROM yezzey_gc()")
            self.assertTrue(before | after <= in_store(MAIN), "GC deleted objects a map or a standby still reads")
            MAIN.crash()
            r = MAIN.start(check=False)
            self.assertNotEqual(r.returncode, 0, "recovery completed without writing the map files")
        finally:
            os.chmod(MAPS, 0o700)
        MAIN.start()
        self.assertEqual(MAIN.status("rr")[0], "offloaded")
        self.assertEqual(objects_of(MAIN, "rr"), after)
        self.assertEqual(MAIN.checksum("rr"), MAIN.checksum("rr_m"))
        self.same_everywhere([MAIN, s], ["rr"])
        self.assertTrue(after <= in_store(MAIN))

    def test_kill_at_random_moments_with_unwritable_maps(self):
        """kill -9 at a random moment of a 200 MB offload while
        pg_yezzey/map refuses writes: recovery waits for the directory;
        then the table is local or offloaded, never half, with the same
        rows on the primary and the standby; GC keeps every object a map
        names; offloading again works."""
        s = self.standby
        yz.make_wide_table(MAIN, "kr_m", 1_300_000)
        MAIN.q("VACUUM (FREEZE) kr_m; CREATE TABLE kr AS SELECT * FROM kr_m; VACUUM (FREEZE) kr")
        expect = MAIN.checksum("kr_m", order="id")
        t0 = time.time()
        MAIN.q("SELECT * FROM yezzey_offload_relation('kr')")
        took = time.time() - t0
        outcomes = []
        for trial in range(3):
            MAIN.q("DROP TABLE kr; CREATE TABLE kr AS SELECT * FROM kr_m; VACUUM (FREEZE) kr; CHECKPOINT")
            os.chmod(MAPS, 0o500)
            try:
                p = yz.offload_in_background(MAIN, "kr")
                at = random.uniform(0, took * 1.1)
                time.sleep(at)
                MAIN.crash()
                p.wait()
                r = MAIN.start(check=False)
                if r.returncode == 0:
                    # Nothing to write yet (killed before the record).
                    outcomes.append((round(at, 2), "started"))
                else:
                    outcomes.append((round(at, 2), "waited for pg_yezzey"))
            finally:
                os.chmod(MAPS, 0o700)
            if r.returncode != 0:
                MAIN.start()
            state = MAIN.status("kr")[0]
            self.assertIn(state, ("local", "offloaded"), f"trial {trial}: killed at {at:.2f}s of {took:.2f}s")
            self.assertEqual(MAIN.checksum("kr", order="id"), expect, f"trial {trial}")
            s.caught_up_with(MAIN)
            self.assertEqual(s.checksum("kr", order="id"), expect, f"trial {trial}, standby")
            referenced = MAIN.referenced_objects()
            MAIN.q("SELECT * FROM yezzey_gc()")
            self.assertTrue(referenced <= in_store(MAIN), f"trial {trial}: GC deleted referenced objects")
            if state == "local":
                MAIN.q("SELECT * FROM yezzey_offload_relation('kr')")
            self.assertEqual(MAIN.status("kr"), ("offloaded", 0))
        print(f"\n  offload took {took:.2f}s; kills (s) and outcomes: {outcomes}")
        self.same_everywhere([MAIN, s], ["kr"])
        MAIN.q("DROP TABLE kr, kr_m")

    def test_full_map_file_system(self):
        """The same on a file system with no space left (ENOSPC): a 64 kB
        tmpfs mounted on pg_yezzey/map and filled."""
        s = self.standby
        mirrored_table(MAIN, "fullfs", 40_000)
        MAIN.q("CHECKPOINT")
        saved = tempfile.mkdtemp(dir=yz.RUN)
        subprocess.run(["cp", "-a", MAPS + "/.", saved], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", MAPS], check=True)
        try:
            subprocess.run(["cp", "-a", saved + "/.", MAPS], check=True)
            subprocess.run(["chown", "-R", "postgres", MAPS], check=True)
            fd = os.open(os.path.join(MAPS, ".filler"), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(fd)
            r = MAIN.psql("SELECT * FROM yezzey_offload_relation('fullfs')")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("No space left", r.stderr)
            self.assertEqual(MAIN.status("fullfs")[0], "offloaded")
            both(MAIN, "DELETE FROM {t} WHERE id % 3 = 0", "fullfs")
            self.assertNotEqual(MAIN.psql("CHECKPOINT", check=False).returncode, 0)
            s.caught_up_with(MAIN)
            self.assertEqual(s.checksum("fullfs"), MAIN.checksum("fullfs_m"))
            # A crash, then space again: recovery finishes, nothing lost.
            MAIN.crash()
            os.remove(os.path.join(MAPS, ".filler"))
            MAIN.start()
            self.assertEqual(MAIN.checksum("fullfs"), MAIN.checksum("fullfs_m"))
        finally:
            MAIN.stop(check=False)
            back = tempfile.mkdtemp(dir=yz.RUN)
            subprocess.run(["cp", "-a", MAPS + "/.", back], check=True)
            subprocess.run(["umount", MAPS], check=True)
            subprocess.run(["rm", "-rf", MAPS], check=True)
            subprocess.run(["cp", "-a", back, MAPS], check=True)
            subprocess.run(["rm", "-f", os.path.join(MAPS, ".filler")], check=True)
            MAIN.start()
        self.same_everywhere([MAIN, s], ["fullfs"])


class BigMaps(Checks):
    """The shared map at the scale the seeds describe, and its limit."""

    def test_ten_thousand_tables_one_by_one(self):
        """10,000 small tables offloaded one by one with default settings
        (30,000 relations, 20,000 objects): every offload works, GC deletes
        none of their objects, and a standby replays them all. Before: the
        fixed map took 16,384 segments; the rest only got a WARNING, and GC
        deleted their objects."""
        n = 10_000
        s = MAIN.standby("big_standby", yz.other_port(2))
        s.start()
        try:
            # One table per transaction, as a DBA's script would (one
            # transaction cannot lock 10,000 new tables).
            create = "".join(f"CREATE TABLE w{i} (id int PRIMARY KEY, v text); "
                             f"INSERT INTO w{i} SELECT g, md5(g::text) FROM generate_series(1, 3) g;\n"
                             for i in range(1, n + 1))
            r = subprocess.run(["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-p", str(MAIN.port), "-f", "-"],
                               input=create, capture_output=True, text=True, env=yz.ENV)
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            MAIN.q(f"""CREATE TABLE w_m AS SELECT i AS t, g AS id, md5(g::text) AS v
                         FROM generate_series(1, {n}) i, generate_series(1, 3) g;
                       CREATE INDEX ON w_m (t);
                       VACUUM (FREEZE)""")
            script = "".join(f"SELECT count(*) FROM yezzey_offload_relation('w{i}');\n" for i in range(1, n + 1))
            t0 = time.time()
            r = subprocess.run(["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-p", str(MAIN.port), "-f", "-"],
                               input=script, capture_output=True, text=True, env=yz.ENV)
            took = time.time() - t0
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            self.assertNotIn("WARNING", r.stderr)
            usage = dict(l.split("|") for l in MAIN.q("SELECT * FROM yezzey_map_usage()").splitlines())
            print(f"\n  offloaded {n} tables one by one in {took:.0f}s; the map holds "
                  f"{usage['segments']} segments of {usage['forks']} forks in {int(usage['bytes']) / 2**20:.1f} MB")
            self.assertGreaterEqual(int(usage["segments"]), 2 * n)
            self.assertGreater(int(usage["segments"]), 16_384, "past the old fixed map's size")
            objects = MAIN.referenced_objects()
            MAIN.q("SELECT * FROM yezzey_gc()")
            store = in_store(MAIN)
            self.assertTrue(objects <= store, "GC deleted objects of offloaded tables")
            self.assertEqual(store, objects, "objects nothing references" + kept_reasons(MAIN, store - objects))
            s.caught_up_with(MAIN)
            self.assertEqual(int(s.q("SELECT count(*) FROM yezzey_segments()")), len(objects))
            # In transactions of 500 tables: one cannot lock all 10,000.
            def digest(c, table_sql):
                sums = []
                for a in range(1, n + 1, 500):
                    r = c.psql(f"""DO $$ DECLARE h text := ''; s text; BEGIN
                        FOR i IN {a}..{min(a + 499, n)} LOOP
                          {table_sql}
                          h := md5(h || s);
                        END LOOP;
                        RAISE NOTICE 'sum=%=', h; END $$""")
                    sums.append(re.search(r"sum=(\w+)=", r.stderr).group(1))
                return ",".join(sums)
            agg = "EXECUTE format('SELECT string_agg(id || v, '','' ORDER BY id) FROM w%s', i) INTO s;"
            mirror = "SELECT string_agg(id || v, ',' ORDER BY id) INTO s FROM w_m WHERE t = i;"
            want = digest(MAIN, mirror)
            for c in (MAIN, s):
                c.restart(wipe_cache=True)
                s.caught_up_with(MAIN)
                self.assertEqual(digest(c, agg), want, f"rows of 10,000 tables on {c.name}")
            MAIN.q("SELECT * FROM yezzey_gc()")
            self.assertEqual(in_store(MAIN), objects)
            self.assertEqual(digest(MAIN, agg), want, "after GC")
        finally:
            s.remove()

    def test_map_limit_refuses_before_uploading(self):
        """yezzey.max_map_memory reached: the offload is refused before
        anything is uploaded or logged (SQLSTATE 53200), the relation stays
        local; a standby with an even smaller limit replays every offload
        the primary made (redo is never refused)."""
        s = MAIN.standby("limit_standby", yz.other_port(3))
        # Below what even an empty map takes: any offload there would be refused.
        s.conf("yezzey.max_map_memory = '64kB'")
        s.start()
        mirrored_table(MAIN, "lim", 2_000)
        try:
            used = int(MAIN.q("SELECT value FROM yezzey_map_usage() WHERE stat = 'bytes'"))
            MAIN.q(f"ALTER SYSTEM SET yezzey.max_map_memory = '{used // 1024}kB'; SELECT pg_reload_conf()")
            time.sleep(0.3)
            before = in_store(MAIN)
            e = MAIN.error_of("SELECT * FROM yezzey_offload_relation('lim')")
            self.assertIn("53200", e)
            self.assertIn("yezzey.max_map_memory", e)
            self.assertEqual(MAIN.status("lim")[0], "local")
            self.assertEqual(in_store(MAIN), before, "a refused offload uploaded objects")
            MAIN.q("ALTER SYSTEM RESET yezzey.max_map_memory; SELECT pg_reload_conf()")
            time.sleep(0.3)
            MAIN.q("""DO $$ BEGIN FOR i IN 1..300 LOOP
                EXECUTE format('CREATE TABLE lim%s AS SELECT * FROM lim', i); END LOOP; END $$;
                VACUUM (FREEZE)""")
            MAIN.q("SELECT * FROM yezzey_offload_relation('lim')")
            for i in range(1, 301):
                MAIN.q(f"SELECT count(*) FROM yezzey_offload_relation('lim{i}')")
            s.caught_up_with(MAIN)
            usage = int(s.q("SELECT value FROM yezzey_map_usage() WHERE stat = 'bytes'"))
            self.assertGreater(usage, 64 * 1024, "redo is never refused")
            self.assertEqual(s.q("SELECT count(*) FROM yezzey_segments()"),
                             MAIN.q("SELECT count(*) FROM yezzey_segments()"))
            self.same_everywhere([MAIN, s], ["lim"])
        finally:
            s.remove()
            MAIN.q("DO $$ BEGIN FOR i IN 1..300 LOOP EXECUTE format('DROP TABLE IF EXISTS lim%s', i); END LOOP; END $$")


class Transactions(Checks):
    """Commands that are not transactions, wal_level = minimal, and data
    checksums enabled after an offload: clusters of their own."""

    def test_not_in_transaction_blocks(self):
        """Like VACUUM: refused in a transaction block (25001), in a
        function's subtransaction, in a read-only transaction (25006); no
        relation changes state. Before: a rolled-back transaction left the
        relation offloaded, saying nothing."""
        mirrored_table(MAIN, "tx", 5_000)
        for sql, state in (
            ("BEGIN; SELECT yezzey_offload_relation('tx'); ROLLBACK", "25001"),
            ("SET default_transaction_read_only = on; SELECT yezzey_offload_relation('tx')", "25006"),
            ("""DO $$ BEGIN BEGIN PERFORM yezzey_offload_relation('tx');
                 EXCEPTION WHEN division_by_zero THEN NULL; END; END $$""", "25001"),
            ("BEGIN; SELECT yezzey_gc(); ROLLBACK", "25001"),
        ):
            e = MAIN.error_of(sql)
            self.assertIn(state, e, sql)
            self.assertEqual(MAIN.status("tx")[0], "local", sql)
        MAIN.q("SELECT * FROM yezzey_offload_relation('tx')")
        e = MAIN.error_of("BEGIN; SELECT yezzey_load_relation('tx'); COMMIT")
        self.assertIn("25001", e)
        self.assertEqual(MAIN.status("tx")[0], "offloaded")
        self.same_everywhere([MAIN], ["tx"])

    def test_wal_level_minimal(self):
        """A relation created (or truncated) in the same transaction skips
        WAL under wal_level = minimal: its offload is refused with a clear
        error; older relations offload, take writes and keep them across
        a restart and a crash. Before: the writes were dropped (1,925 rows
        for 1,000 ids)."""
        c = Cluster("minimal", yz.other_port(4))
        c.init()
        c.conf("wal_level = minimal\nmax_wal_senders = 0")
        c.start()
        try:
            c.q("CREATE EXTENSION yezzey")
            e = c.error_of("""DO $$ BEGIN
                CREATE TABLE fresh (id int PRIMARY KEY, v text);
                INSERT INTO fresh SELECT g, md5(g::text) FROM generate_series(1, 1000) g;
                PERFORM yezzey_offload_relation('fresh'); END $$""")
            self.assertIn("55000", e)
            self.assertIn("wal_level", e)
            mirrored_table(c, "old", 20_000)
            c.q("SELECT * FROM yezzey_offload_relation('old')")
            e = c.error_of("""DO $$ BEGIN TRUNCATE old; INSERT INTO old SELECT * FROM old_m;
                PERFORM yezzey_offload_relation('old'); END $$""")
            self.assertIn("55000", e)
            both(c, "UPDATE {t} SET note = 'w' || id WHERE id % 10 = 0", "old")
            self.assertEqual(c.q("SELECT count(*) = count(DISTINCT id) FROM old"), "t")
            c.crash()
            c.start()
            self.assertEqual(c.q("SELECT count(*), count(DISTINCT id) FROM old"),
                             c.q("SELECT count(*), count(DISTINCT id) FROM old_m"))
            self.same_everywhere([c], ["old"])
        finally:
            c.remove()

    def test_checksums_enabled_after_offload(self):
        """A cluster without data checksums (wal_log_hints on) offloads a
        table, then pg_checksums --enable rewrites the local files: the
        offloaded pages, which have none, get theirs when read (from the
        store and from the frame cache). Before: every one failed
        PostgreSQL's checksum test."""
        c = Cluster("nochecksums", yz.other_port(5))
        subprocess.run(["rm", "-rf", c.data], check=True)
        r = run_as_pg(os.path.join(yz.BIN, "initdb"), "-D", c.data, "-U", "postgres", "-A", "trust",
                      "-E", "UTF8", "--locale=C", check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(os.path.join(MAIN.data, "postgresql.conf")) as f:
            conf = f.read().split("# --- yezzey demo/test cluster ---", 1)[1]
        c.conf(conf.replace(f"port = {MAIN.port}", f"port = {c.port}") + "\nwal_log_hints = on")
        c.start()
        try:
            c.q("CREATE EXTENSION yezzey")
            self.assertEqual(c.q("SHOW data_checksums"), "off")
            mirrored_table(c, "cs", 30_000)
            c.q("SELECT * FROM yezzey_offload_relation('cs')")
            c.checksum("cs")  # the frame cache holds its frames
            c.stop()
            r = run_as_pg(os.path.join(yz.BIN, "pg_checksums"), "--enable", "-D", c.data)
            self.assertIn("Checksums enabled", r.stdout)
            c.start()
            self.assertEqual(c.q("SHOW data_checksums"), "on")
            self.assertEqual(c.checksum("cs"), c.checksum("cs_m"), "from the frame cache")
            both(c, "UPDATE {t} SET note = 'x' WHERE id % 100 = 0", "cs")
            self.same_everywhere([c], ["cs"])
        finally:
            c.remove()


class Copies(Checks):
    """Copies GC must know about: standbys that are delayed, paused,
    cascaded or stopped, a WAL receiver that never replays, and backups
    whose stop was not recorded or that a crash interrupted."""

    @classmethod
    def tearDownClass(cls):
        yz.sh(yz.GARAGE, "resume", check=False)
        super().tearDownClass()

    def tearDown(self):
        MAIN.q("SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE NOT active")

    def collected_once_replayed(self, gone):
        """GC deletes `gone` once the standbys published their replay
        positions past its retirement (every ten seconds it moves)."""
        for _ in range(120):
            MAIN.q("SELECT * FROM yezzey_gc()")
            if not gone & in_store(MAIN):
                return
            time.sleep(0.5)
        left = gone & in_store(MAIN)
        self.assertEqual(left, set(), "GC kept them after the standbys replayed past" + kept_reasons(MAIN, left))

    def load_back_and_collect(self, table):
        """The primary loads a table back and collects garbage: the
        objects a lagging copy still reads are retired, not yet garbage."""
        gone = objects_of(MAIN, table)
        MAIN.q(f"SELECT * FROM yezzey_load_relation('{table}')")
        MAIN.q("SELECT * FROM yezzey_gc()")
        return gone

    def test_delayed_and_paused_standbys(self):
        """A standby with recovery_min_apply_delay, stopped while it is
        behind (its slot's restart_lsn is past the retirement: it has the
        WAL, not the replay), and a standby whose replay is paused: GC keeps
        what they read until they replayed past it."""
        delayed = MAIN.standby("delayed", yz.other_port(6))
        paused = MAIN.standby("paused", yz.other_port(7))
        try:
            for s in (delayed, paused):
                s.start()
            mirrored_table(MAIN, "dl", 30_000)
            MAIN.q("SELECT * FROM yezzey_offload_relation('dl')")
            for s in (delayed, paused):
                s.caught_up_with(MAIN)
                yz.published(MAIN, s.member(), in_recovery=True)
            delayed.conf("recovery_min_apply_delay = '25s'")
            delayed.q("SELECT pg_reload_conf()")
            paused.q("SELECT pg_wal_replay_pause()")
            time.sleep(1)
            # The delay applies at commit records: one before the load
            # back holds its records back too.
            MAIN.q("CREATE TABLE dl_marker ()")
            gone = self.load_back_and_collect("dl")
            delayed.stop()
            MAIN.q("SELECT * FROM yezzey_gc()")
            self.assertTrue(gone <= in_store(MAIN), "GC deleted objects a delayed or paused standby reads")
            # The paused standby still reads them (its map still names them).
            paused.q("SELECT yezzey_cache_clear()")
            self.assertEqual(paused.checksum("dl"), MAIN.checksum("dl_m"))
            delayed.start()
            self.assertEqual(delayed.checksum("dl"), MAIN.checksum("dl_m"))
            paused.q("SELECT pg_wal_replay_resume()")
            for s in (delayed, paused):
                s.caught_up_with(MAIN)
            self.collected_once_replayed(gone)
            self.same_everywhere([MAIN, delayed, paused], ["dl"])
        finally:
            delayed.remove()
            paused.remove()

    def test_cascaded_standby(self):
        """primary -> standby -> cascaded standby, whose replay is paused:
        the primary cannot see it, its published replay position holds."""
        s1 = MAIN.standby("casc1", yz.other_port(8))
        s1.start()
        s2 = s1.standby("casc2", yz.other_port(9))
        try:
            s2.start()
            mirrored_table(MAIN, "cc", 30_000)
            MAIN.q("SELECT * FROM yezzey_offload_relation('cc')")
            s1.caught_up_with(MAIN)
            s2.caught_up_with(MAIN)
            yz.published(MAIN, s2.member(), in_recovery=True)
            s2.q("SELECT pg_wal_replay_pause()")
            time.sleep(1)
            gone = self.load_back_and_collect("cc")
            s1.caught_up_with(MAIN)
            MAIN.q("SELECT * FROM yezzey_gc()")
            self.assertTrue(gone <= in_store(MAIN), "GC deleted objects a cascaded standby reads")
            s2.q("SELECT yezzey_cache_clear()")
            self.assertEqual(s2.checksum("cc"), MAIN.checksum("cc_m"))
            s2.q("SELECT pg_wal_replay_resume()")
            s2.caught_up_with(MAIN)
            self.collected_once_replayed(gone)
            self.same_everywhere([MAIN, s1, s2], ["cc"])
        finally:
            s2.remove()
            s1.remove()

    def test_wal_receiver_that_never_replays(self):
        """pg_receivewal streaming from a slot reports no replay position:
        it must not hold GC (before: it held every object forever)."""
        d = os.path.join(yz.RUN, "receivewal")
        os.makedirs(d, exist_ok=True)
        subprocess.run(["chown", "postgres", d], check=True)
        MAIN.q("SELECT pg_create_physical_replication_slot('receiver')")
        p = subprocess.Popen(["runuser", "-u", "postgres", "--", os.path.join(yz.BIN, "pg_receivewal"),
                              "-h", yz.ENV["PGHOST"], "-p", str(MAIN.port), "-U", "postgres",
                              "-S", "receiver", "-D", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            MAIN.wait_for("SELECT count(*) FROM pg_stat_replication", "1")
            mirrored_table(MAIN, "rv", 20_000)
            MAIN.q("SELECT * FROM yezzey_offload_relation('rv')")
            # It has replied (without a replay position): it never replays.
            MAIN.wait_for("SELECT count(*) FROM pg_stat_replication WHERE replay_lsn IS NULL "
                          "AND reply_time IS NOT NULL", "1")
            gone = self.load_back_and_collect("rv")
            self.assertEqual(gone & in_store(MAIN), set(), "a WAL receiver held GC")
            self.same_everywhere([MAIN], ["rv"])
        finally:
            p.terminate()
            p.wait()
            MAIN.q("SELECT pg_drop_replication_slot('receiver')")

    def test_backup_whose_stop_was_not_recorded(self):
        """pg_backup_stop() while the store does not answer: the backup
        completed but its registration still says running. After a
        restart it is kept while Barman's catalogue lists it DONE (before:
        judged abandoned, its objects collected), and by
        yezzey.backup_retention without a catalogue."""
        repo = f"s3://{os.environ['YEZZEY_BUCKET']}/barman-fake"
        MAIN.q(f"ALTER SYSTEM SET yezzey.barman_repository = '{repo}/cloud'; "
               "ALTER SYSTEM SET yezzey.timeout = 2; SELECT pg_reload_conf()")
        time.sleep(0.3)
        mirrored_table(MAIN, "bk", 20_000)
        MAIN.q("SELECT * FROM yezzey_offload_relation('bk')")
        bid = "20261207T101010"
        script = f"""SELECT pg_backup_start('Barman backup cloud {bid}', true);
\\! bash {yz.GARAGE} pause
SELECT lsn FROM pg_backup_stop();
\\! bash {yz.GARAGE} resume
"""
        r = subprocess.run(["psql", "-XAtq", "-p", str(MAIN.port), "-f", "-"], input=script,
                           capture_output=True, text=True, env=yz.ENV)
        self.assertIn("could not record that backup", r.stderr)
        # Barman writes backup.info last, as DONE.
        with tempfile.NamedTemporaryFile("w", suffix=".info") as f:
            f.write(f"backup_label=None\nstatus=DONE\nsystemid={MAIN.system_id()}\n")
            f.flush()
            env = dict(os.environ, YEZZEY_STORAGE_URL=f"{repo}/cloud")
            subprocess.run([yz.TOOL, "put-raw", f.name, f"base/{bid}/backup.info"], env=env, check=True)
        MAIN.restart()
        gone = self.load_back_and_collect("bk")
        self.assertIn("Barman's catalogue (DONE)", MAIN.q("SELECT string_agg(status, ';') FROM yezzey_backups"))
        self.assertTrue(gone <= in_store(MAIN), "GC collected what a completed backup needs")
        # barman-cloud-backup-delete: the catalogue no longer lists it.
        subprocess.run([yz.TOOL, "rm", f"base/{bid}/backup.info"], env=env, check=True)
        MAIN.q("SELECT * FROM yezzey_gc()")
        self.assertEqual(gone & in_store(MAIN), set())
        MAIN.q("ALTER SYSTEM RESET yezzey.barman_repository; ALTER SYSTEM RESET yezzey.timeout; "
               "SELECT pg_reload_conf()")
        self.same_everywhere([MAIN], ["bk"])

    def test_backup_interrupted_by_a_backend_crash(self):
        """A backend crash restarts the server's processes, not its
        postmaster: a backup running then is not running any more (before:
        `running` forever); without a catalogue it is kept for
        yezzey.backup_retention, then let go."""
        MAIN.q("ALTER SYSTEM SET yezzey.backup_retention = '1h'; SELECT pg_reload_conf()")
        try:
            p = subprocess.Popen(["psql", "-XAtq", "-p", str(MAIN.port), "-c",
                                  "SELECT pg_backup_start('interrupted', true); SELECT pg_sleep(60)"],
                                 env=yz.ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            MAIN.wait_for("SELECT count(*) FROM yezzey_backups WHERE label = 'interrupted' AND status = 'running'", "1")
            pid = MAIN.q("SELECT pid FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()")
            postmaster = MAIN.postmaster_pid()
            subprocess.run(["kill", "-9", pid], check=True)
            p.wait()
            for _ in range(300):
                if MAIN.psql("SELECT 1", check=False).returncode == 0:
                    break
                time.sleep(0.1)
            self.assertEqual(MAIN.postmaster_pid(), postmaster, "the postmaster itself restarted")
            status = MAIN.q("SELECT status FROM yezzey_backups WHERE label = 'interrupted'")
            self.assertIn("kept until", status)
        finally:
            MAIN.q("ALTER SYSTEM RESET yezzey.backup_retention; SELECT pg_reload_conf()")
            time.sleep(0.3)
        self.assertIn("expired", MAIN.q("SELECT status FROM yezzey_backups WHERE label = 'interrupted'"))


class DamagedState(Checks):
    """Damaged, truncated or missing map files, and damaged, truncated or
    deleted objects."""

    def map_file(self, table):
        rel = MAIN.q(f"SELECT pg_relation_filenode('{table}')")
        return next(os.path.join(MAPS, f) for f in os.listdir(MAPS) if f.split("_")[2:3] == [rel]
                    and f.endswith("_0.json"))

    def test_damaged_truncated_and_missing_map_files(self):
        """Each way a map file can be lost: a flipped byte, a truncated
        file, a deleted one. The relation never reads as empty (before:
        0 rows, with a warning in the log): every read fails naming its
        file (XX001), GC refuses, yezzey_repair_maps() rebuilds the map
        from the objects in the store, and the rows are back."""
        for how in ("flip", "truncate", "delete"):
            with self.subTest(how=how):
                t = f"dm_{how}"
                mirrored_table(MAIN, t, 30_000)
                MAIN.q(f"SELECT * FROM yezzey_offload_relation('{t}')")
                both(MAIN, "UPDATE {t} SET note = 'local' WHERE id % 1000 = 0", t)
                MAIN.q("CHECKPOINT")
                path = self.map_file(t)
                MAIN.stop()
                with open(path, "rb") as f:
                    data = bytearray(f.read())
                if how == "flip":
                    data[len(data) // 2] ^= 0x04
                    open(path, "wb").write(data)
                elif how == "truncate":
                    open(path, "wb").write(data[: len(data) * 2 // 3])
                else:
                    os.remove(path)
                MAIN.start()
                e = MAIN.error_of(f"SELECT count(*) FROM {t}")
                self.assertIn("XX001", e)
                self.assertIn("damaged or missing", e)
                self.assertIn(MAIN.q(f"SELECT pg_relation_filepath('{t}')"), e)
                self.assertEqual(MAIN.status(t)[0], "map damaged")
                self.assertIn("XX001", MAIN.error_of("SELECT * FROM yezzey_gc()"))
                rows = MAIN.q("SELECT outcome FROM yezzey_repair_maps()")
                self.assertEqual(rows, "rebuilt from the store")
                self.assertEqual(MAIN.checksum(t), MAIN.checksum(t + "_m"))
                self.assertEqual(MAIN.status(t)[0], "partially offloaded")
        self.same_everywhere([MAIN], [f"dm_{h}" for h in ("flip", "truncate", "delete")])

    def test_offline_repair(self):
        """A map damaged on a server that cannot use SQL (stopped): the
        tool rebuilds it from the store."""
        mirrored_table(MAIN, "dmo", 20_000)
        MAIN.q("SELECT * FROM yezzey_offload_relation('dmo'); CHECKPOINT")
        path = self.map_file("dmo")
        MAIN.stop()
        open(path, "w").write("{")
        env = dict(os.environ, YEZZEY_STORAGE_URL=f"s3://{os.environ['YEZZEY_BUCKET']}/pg",
                   YEZZEY_KEY_FILE=os.path.join(yz.RUN, "yezzey.key"))
        r = subprocess.run([yz.TOOL, "repair-maps", MAIN.data], env=env, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        self.assertIn("REPAIRED", r.stdout)
        subprocess.run(["chown", "postgres", path], check=True)
        MAIN.start()
        self.same_everywhere([MAIN], ["dmo"])

    def test_damaged_truncated_and_deleted_objects(self):
        """An object changed, cut short or deleted in the store behind
        yezzey's back: reads fail with an SQLSTATE, never with wrong or
        fewer rows, and yezzey-tool verify-maps names each problem with
        its relation file."""
        env = dict(os.environ, YEZZEY_STORAGE_URL=f"s3://{os.environ['YEZZEY_BUCKET']}/pg",
                   YEZZEY_KEY_FILE=os.path.join(yz.RUN, "yezzey.key"))
        tables = {"ob_flip": "XX001", "ob_cut": "XX001", "ob_gone": "58P01"}
        for t in tables:
            mirrored_table(MAIN, t, 20_000)
            MAIN.q(f"SELECT * FROM yezzey_offload_relation('{t}')")
        with tempfile.TemporaryDirectory() as d:
            for t in tables:
                name = objects_of(MAIN, t).pop()
                if t == "ob_gone":
                    subprocess.run([yz.TOOL, "rm", name], env=env, check=True)
                    continue
                p = os.path.join(d, t)
                subprocess.run([yz.TOOL, "get-raw", name, p], env=env, check=True)
                data = bytearray(open(p, "rb").read())
                if t == "ob_flip":
                    data[len(data) // 3] ^= 0x10
                else:
                    data = data[: len(data) // 2]
                open(p, "wb").write(data)
                subprocess.run([yz.TOOL, "put-raw", p, name], env=env, check=True)
        MAIN.restart(wipe_cache=True)
        for t, state in tables.items():
            e = MAIN.error_of(f"SELECT count(*), max(note) FROM {t}")
            self.assertIn(state, e, t)
        MAIN.q("CHECKPOINT")
        r = subprocess.run([yz.TOOL, "verify-maps", MAIN.data], env=env, capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        for t in tables:
            path = MAIN.q(f"SELECT pg_relation_filepath('{t}')")
            self.assertIn(path, r.stdout, f"verify-maps does not name {t}")
        self.assertIn("MISSING", r.stdout)
        self.assertIn("DAMAGED", r.stdout)
        for t in tables:
            MAIN.q(f"DROP TABLE {t}")


if __name__ == "__main__":
    yz.run(__name__)
