"""Offload and load back against the patched server and Garage on 127.0.0.1.

Run by scripts/test.sh (which starts Garage and exports its settings);
every test works on a real cluster of the patched PostgreSQL with yezzey
preloaded, and compares full-table checksums, never fixed answers.
"""
import os
import subprocess
import sys
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG = [os.path.join(ROOT, "scripts/pg.sh")]
GARAGE = [os.path.join(ROOT, "scripts/garage.sh")]


def sh(*args, check=True):
    return subprocess.run(["bash", *args], check=check, capture_output=True, text=True)


def pg_env():
    out = sh(*PG, "env").stdout
    # export PGHOST=... PGPORT=... PGUSER=... PATH=...:$PATH
    env = dict(os.environ)
    for part in out.replace("export ", "").split():
        k, v = part.split("=", 1)
        env[k] = v.replace(":$PATH", ":" + os.environ["PATH"])
    return env


ENV = pg_env()


def psql(sql, db="postgres", check=True, port=None):
    # Through stdin, so each statement autocommits as in a DBA's script.
    env = ENV if port is None else dict(ENV, PGPORT=str(port))
    r = subprocess.run(
        ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"],
        input="\\set VERBOSITY verbose\n" + sql + "\n", capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"psql failed: {sql}\n{r.stderr}")
    return r


def q(sql, db="postgres", port=None):
    return psql(sql, db, port=port).stdout.strip()


def error_of(sql):
    r = psql(sql, check=False)
    if r.returncode == 0:
        raise AssertionError(f"expected an error from: {sql}\ngot: {r.stdout}")
    return r.stderr


def checksum(table, order="id", db="postgres", port=None):
    return q(f"SELECT md5(string_agg(t::text, ',' ORDER BY {order})) FROM {table} t", db, port)


def other_server(datadir, port, action):
    """pg.sh ACTION for a second cluster (a standby or a restored backup)."""
    return subprocess.run(["env", f"YEZZEY_PGDATA={datadir}", f"YEZZEY_PGPORT={port}", "bash", *PG, action],
                          capture_output=True, text=True)


def restart(wipe_cache=True):
    sh(*PG, "stop")
    if wipe_cache:
        data = os.path.join(os.environ["YEZZEY_RUN"], "pgdata")
        subprocess.run(["rm", "-rf", os.path.join(data, "pg_yezzey/pgsql_tmp_cache")], check=True)
    sh(*PG, "start")


def crash_and_restart():
    sh(*PG, "crash")
    sh(*PG, "start")


def make_table(name, rows=200_000, extra="", db="postgres"):
    q(f"""DROP TABLE IF EXISTS {name} CASCADE;
CREATE TABLE {name} (id int PRIMARY KEY, day date, amount numeric, note text) {extra};
INSERT INTO {name}
SELECT g, date '2023-01-01' + (g % 365), (g::bigint * 7919) % 100000 / 100.0,
       repeat(md5(g::text), 1 + g % 5) || CASE WHEN g % 1000 = 0 THEN repeat('x', 3000) ELSE '' END
  FROM generate_series(1, {rows}) g;
ANALYZE {name};""", db)


def objects_in_store():
    """Object names under this cluster's prefix, via yezzey-tool."""
    tool = os.path.join(ROOT, "target/release/yezzey-tool")
    sysid = q("SELECT system_identifier FROM pg_control_system()")
    env = dict(os.environ, YEZZEY_STORAGE_URL=f"s3://{os.environ['YEZZEY_BUCKET']}/pg")
    r = subprocess.run([tool, "ls", f"{sysid}/"], capture_output=True, text=True, env=env, check=True)
    return {line.split("\t")[1] for line in r.stdout.splitlines() if line.strip()}


def referenced_objects():
    sysid = q("SELECT system_identifier FROM pg_control_system()")
    names = set()
    data = os.path.join(os.environ["YEZZEY_RUN"], "pgdata", "pg_yezzey", "map")
    import json
    for f in os.listdir(data) if os.path.isdir(data) else []:
        if not f.endswith(".json"):
            continue
        with open(os.path.join(data, f)) as fh:
            m = json.load(fh)
        fork = ["main", "fsm", "vm", "init"][m["fork"]]
        for s in m["segments"]:
            names.add(f"{sysid}/seg{m['content']}/{m['spc']}/{m['db']}/{m['rel']}/{fork}.{s['segno']}.{s['object_id']}.yz")
    return names


def maps_of_database(db_oid, pgdata="pgdata"):
    """Map file names of one database (<spc>_<db>_<rel>_<fork>.json)."""
    data = os.path.join(os.environ["YEZZEY_RUN"], pgdata, "pg_yezzey", "map")
    return sorted(f for f in os.listdir(data) if f.endswith(".json") and f.split("_")[1] == str(db_oid))


def new_database(name):
    """A fresh database with yezzey and one offloaded table `cold`; returns its oid."""
    psql(f"DROP DATABASE IF EXISTS {name}")
    q(f"CREATE DATABASE {name}")
    q("CREATE EXTENSION yezzey", name)
    make_table("cold", rows=30_000, db=name)
    q("VACUUM (FREEZE) cold; SELECT * FROM yezzey_offload_relation('cold')", name)
    return q(f"SELECT oid FROM pg_database WHERE datname = '{name}'")


def object_id(name):
    """The object id in an object name (<fork>.<segno>.<id>.yz)."""
    return name.rsplit("/", 1)[-1].split(".")[2]


def retired_ids():
    """Object ids with a record in pg_yezzey/retired/."""
    d = os.path.join(os.environ["YEZZEY_RUN"], "pgdata", "pg_yezzey", "retired")
    return {f[:-5] for f in os.listdir(d) if f.endswith(".json")} if os.path.isdir(d) else set()


def map_segments(relfilenode):
    """The local-write flag of each segment in a relation's map file."""
    import json
    data = os.path.join(os.environ["YEZZEY_RUN"], "pgdata", "pg_yezzey", "map")
    for f in os.listdir(data):
        if f.endswith("_0.json") and f.split("_")[2] == str(relfilenode):
            with open(os.path.join(data, f)) as fh:
                return [s["written"] for s in json.load(fh)["segments"]]
    raise AssertionError(f"no map file for relfilenode {relfilenode}")


class Offload(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        sh(*PG, "init")
        sh(*PG, "start")
        q("CREATE EXTENSION yezzey; CREATE EXTENSION amcheck")

    @classmethod
    def tearDownClass(cls):
        sh(*PG, "stop", check=False)

    def access_paths(self, t):
        """Checksums of the same data through every access path."""
        out = {}
        out["seq"] = checksum(t)
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
            ["bash", "-c", f"psql -XAtq -c 'COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT' | md5sum"],
            capture_output=True, text=True, env=ENV, check=True).stdout
        q("DROP TABLE IF EXISTS local_dim; CREATE TABLE local_dim AS SELECT g AS id, g % 10 AS k FROM generate_series(1, 200000, 3) g")
        out["join"] = q(f"SELECT sum(hashtext(t::text)::bigint), count(*) FROM {t} t JOIN local_dim d USING (id) WHERE d.k = 3")
        return out

    def test_transparent_reads_restart_and_load_back(self):
        make_table("tr")
        before = self.access_paths("tr")
        rows = q("SELECT relation, segments FROM yezzey_offload_relation('tr')").splitlines()
        self.assertIn("tr|1", rows)
        self.assertTrue(any(r.startswith("tr_pkey|") for r in rows), rows)
        state, local, remote = q("SELECT state, local_bytes, remote_bytes FROM yezzey_relation_status('tr')").split("|")
        self.assertEqual(state, "offloaded")
        self.assertLess(int(local), 100_000)
        self.assertGreater(int(remote), 0)
        self.assertEqual(self.access_paths("tr"), before, "after offload")
        restart(wipe_cache=True)
        self.assertEqual(self.access_paths("tr"), before, "after restart with an empty cache")
        # The scans above ran in other sessions; the cache's counters are shared.
        self.assertGreater(int(q("SELECT value FROM yezzey_remote_stats() WHERE stat = 'cache_shared_misses'")), 0)
        self.assertEqual(q("SELECT count(*) FROM verify_heapam('tr')"), "0")
        q("SELECT bt_index_check('tr_pkey', true)")
        q("SELECT * FROM yezzey_load_relation('tr')")
        self.assertEqual(q("SELECT state FROM yezzey_relation_status('tr')"), "local")
        restart(wipe_cache=True)
        self.assertEqual(self.access_paths("tr"), before, "after load back")

    def test_writes_after_offload_survive_restart_and_crash(self):
        make_table("wr", rows=100_000)
        q("SELECT * FROM yezzey_offload_relation('wr')")
        restart()
        q("""UPDATE wr SET amount = -1 WHERE id % 500 = 0;
             INSERT INTO wr SELECT g, date '2024-01-01', 1, 'new' FROM generate_series(100001, 101000) g;
             DELETE FROM wr WHERE id BETWEEN 5000 AND 5999;
             VACUUM wr;
             CREATE INDEX wr_day ON wr (day);
             ALTER TABLE wr ADD COLUMN flag bool DEFAULT true;""")
        expect = checksum("wr")
        crash_and_restart()
        self.assertEqual(checksum("wr"), expect, "after kill -9")
        restart()
        self.assertEqual(checksum("wr"), expect, "after restart")
        self.assertEqual(q("SELECT count(*) FROM verify_heapam('wr')"), "0")
        q("SELECT bt_index_check('wr_pkey', true)")
        # ids divisible by 500, less 5000 and 5500 (deleted)
        self.assertEqual(q("SELECT count(*) FROM wr WHERE amount = -1"), "198")

    def test_first_write_marks_segment_durably(self):
        """Reads of a segment without local writes skip the local file; the
        first write must flip that, durably, before its block lands."""
        make_table("lw", rows=100_000)
        q("SELECT * FROM yezzey_offload_relation('lw', with_indexes => false)")
        rel = q("SELECT relfilenode FROM pg_class WHERE relname = 'lw'")
        self.assertEqual(map_segments(rel), [False], "fresh offload has no local writes")
        q("UPDATE lw SET note = 'changed after offload' WHERE id = 4242; CHECKPOINT")
        # The checkpointer wrote the block, so it recorded the write first.
        self.assertEqual(map_segments(rel), [True])
        expect = checksum("lw")
        # No WAL replays the update after this crash: only the flag makes
        # reads look at the local block instead of the object's old one.
        crash_and_restart()
        self.assertEqual(map_segments(rel), [True])
        self.assertEqual(q("SELECT note FROM lw WHERE id = 4242"), "changed after offload")
        self.assertEqual(checksum("lw"), expect, "after kill -9")
        self.assertEqual(q("SELECT count(*) FROM verify_heapam('lw')"), "0")

    def test_damaged_cache_is_an_error_then_cleared(self):
        """With data checksums on, cache hits rely on PostgreSQL's page
        checksum: a damaged cached page must be its ERROR, never rows, and
        yezzey_cache_clear() must mend it from the objects."""
        self.assertEqual(q("SHOW data_checksums"), "on")
        make_table("dc", rows=50_000)
        q("VACUUM (FREEZE) dc")
        expect = checksum("dc")
        q("SELECT * FROM yezzey_offload_relation('dc', with_indexes => false)")
        restart(wipe_cache=True)
        self.assertEqual(checksum("dc"), expect, "first read fills the cache")
        # Flip a byte inside the first block of every cached frame (a page's
        # line pointers: its header still says the page is not new).
        cache = os.path.join(os.environ["YEZZEY_RUN"], "pgdata", "pg_yezzey", "pgsql_tmp_cache")
        damaged = 0
        for sub in os.listdir(cache):
            d = os.path.join(cache, sub)
            if len(sub) != 2 or not os.path.isdir(d):
                continue
            for f in os.listdir(d):
                if f.endswith(".claim"):
                    continue
                with open(os.path.join(d, f), "r+b") as fh:
                    head = fh.read(16)
                    nblocks = int.from_bytes(head[12:16], "little")
                    at = 64 + nblocks * 8 + 40
                    fh.seek(at)
                    b = fh.read(1)
                    fh.seek(at)
                    fh.write(bytes([b[0] ^ 0xFF]))
                    damaged += 1
        self.assertGreater(damaged, 0)
        restart(wipe_cache=False)
        self.assertIn("invalid page", error_of("SELECT count(*), sum(hashtext(note)) FROM dc"))
        entries = int(q("SELECT entries FROM yezzey_cache_clear()"))
        self.assertGreaterEqual(entries, damaged)
        self.assertEqual(checksum("dc"), expect, "after yezzey_cache_clear()")
        self.assertEqual(q("SELECT count(*) FROM verify_heapam('dc')"), "0")

    def test_unfrozen_table_gets_advice(self):
        """Offloading pages that readers will set hint bits on is allowed,
        with a NOTICE saying so; a frozen table offloads without it."""
        make_table("fz", rows=20_000)
        pages = int(q("SELECT pg_relation_size('fz') / 8192"))
        r = psql("SELECT * FROM yezzey_offload_relation('fz', with_indexes => false)")
        self.assertIn(f'{pages} of {pages} pages of "fz" are not all-frozen', r.stderr)
        self.assertIn("VACUUM (FREEZE)", r.stderr)
        q("SELECT * FROM yezzey_load_relation('fz'); VACUUM (FREEZE) fz")
        r = psql("SELECT * FROM yezzey_offload_relation('fz', with_indexes => false)")
        self.assertNotIn("all-frozen", r.stderr)
        self.assertEqual(q("SELECT state FROM yezzey_relation_status('fz')"), "offloaded")

    def test_truncate_drop_and_gc(self):
        make_table("gc1", rows=50_000)
        make_table("gc2", rows=50_000)
        q("SELECT * FROM yezzey_offload_relation('gc1'); SELECT * FROM yezzey_offload_relation('gc2')")
        kept_before = referenced_objects()
        self.assertTrue(kept_before <= objects_in_store())
        q("TRUNCATE gc1")
        q("DROP TABLE gc2")
        q("CHECKPOINT")
        self.assertEqual(q("SELECT count(*) FROM gc1"), "0")
        live = referenced_objects()
        self.assertLess(len(live), len(kept_before), "TRUNCATE/DROP must release map entries")
        deleted = int(q("SELECT deleted_objects FROM yezzey_gc()"))
        self.assertGreater(deleted, 0)
        self.assertEqual(referenced_objects() - objects_in_store(), set(), "GC deleted a referenced object")
        self.assertEqual(objects_in_store() - referenced_objects(), set(), "GC left unreferenced objects")
        # A re-filled truncated table is served locally, not from old objects.
        q("INSERT INTO gc1 SELECT g, now(), 0, 'again' FROM generate_series(1, 10) g")
        self.assertEqual(q("SELECT count(*) FROM gc1 WHERE note = 'again'"), "10")

    def test_vacuum_truncation_then_reextension(self):
        make_table("vt", rows=60_000)
        q("SELECT * FROM yezzey_offload_relation('vt')")
        q("DELETE FROM vt WHERE id > 1000; VACUUM vt")
        q("INSERT INTO vt SELECT g, date '2025-01-01', 2, 'fresh' FROM generate_series(1001, 60000) g")
        expect = q("SELECT count(*), count(*) FILTER (WHERE note = 'fresh') FROM vt")
        self.assertEqual(expect, "60000|59000")
        restart()
        self.assertEqual(q("SELECT count(*), count(*) FILTER (WHERE note = 'fresh') FROM vt"), expect)
        self.assertEqual(q("SELECT count(*) FROM verify_heapam('vt')"), "0")

    def test_partitioned_table(self):
        q("""DROP TABLE IF EXISTS events CASCADE;
CREATE TABLE events (id int, day date, v text) PARTITION BY RANGE (day);
CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
INSERT INTO events SELECT g, date '2023-01-01' + (g % 700), md5(g::text) FROM generate_series(1, 100000) g;""")
        expect = checksum("events", "id")
        rows = q("SELECT relation FROM yezzey_offload_relation('events')").splitlines()
        self.assertIn("events_2023", rows)
        self.assertIn("events_2024", rows)
        restart()
        self.assertEqual(checksum("events", "id"), expect)

    def test_database_copy_move_and_drop(self):
        """Commands that copy a database's files refuse offloaded sources;
        DROP DATABASE releases the maps, and GC then frees the objects."""
        psql("DROP DATABASE IF EXISTS yz_copy")
        src = new_database("yz_src")
        expect = checksum("cold", db="yz_src")
        self.assertTrue(maps_of_database(src))
        e = error_of("CREATE DATABASE yz_copy TEMPLATE yz_src STRATEGY FILE_COPY")
        self.assertIn("0A000", e)
        self.assertIn("STRATEGY WAL_LOG", e)
        self.assertEqual(q("SELECT count(*) FROM pg_database WHERE datname = 'yz_copy'"), "0")
        # The default strategy reads through the storage manager: same rows,
        # and the copy is local.
        q("CREATE DATABASE yz_copy TEMPLATE yz_src")
        self.assertEqual(checksum("cold", db="yz_copy"), expect)
        self.assertEqual(q("SELECT count(*) FROM yezzey_offloaded_relations", "yz_copy"), "0")
        self.assertEqual(q("CREATE EXTENSION amcheck; SELECT count(*) FROM verify_heapam('cold')", "yz_copy"), "0")

        ts = os.path.join(os.environ["YEZZEY_RUN"], "ts_move")
        subprocess.run(["rm", "-rf", ts], check=True)
        os.makedirs(ts)
        st = os.stat(os.path.join(os.environ["YEZZEY_RUN"], "pgdata"))
        os.chown(ts, st.st_uid, st.st_gid)
        psql("DROP TABLESPACE IF EXISTS yz_ts")
        q(f"CREATE TABLESPACE yz_ts LOCATION '{ts}'")
        e = error_of("ALTER DATABASE yz_src SET TABLESPACE yz_ts")
        self.assertIn("0A000", e)
        self.assertIn("ALTER TABLE", e)
        # The way the hint points: a table moves through the storage manager.
        q("ALTER TABLE cold SET TABLESPACE yz_ts", "yz_src")
        self.assertEqual(checksum("cold", db="yz_src"), expect)
        self.assertEqual(q("SELECT state FROM yezzey_relation_status('cold')", "yz_src"), "local")

        q("SELECT * FROM yezzey_offload_relation('cold')", "yz_src")
        q("DROP DATABASE yz_src")
        self.assertEqual(maps_of_database(src), [], "DROP DATABASE must release its maps")
        q("SELECT * FROM yezzey_gc()")
        self.assertEqual(objects_in_store(), referenced_objects())
        q("DROP DATABASE yz_copy; DROP TABLESPACE yz_ts")

    def test_gc_forgets_maps_of_vanished_databases(self):
        """A database dropped while yezzey was not loaded leaves its maps:
        GC forgets them and frees their objects."""
        gone = new_database("yz_gone")
        names = referenced_objects()
        auto = os.path.join(os.environ["YEZZEY_RUN"], "pgdata", "postgresql.auto.conf")
        with open(auto) as f:
            saved = f.read()
        try:
            # (ALTER SYSTEM would write '""', a library with an empty name.)
            with open(auto, "a") as f:
                f.write("\nshared_preload_libraries = ''\n")
            restart(wipe_cache=False)
            q("DROP DATABASE yz_gone")
        finally:
            with open(auto, "w") as f:
                f.write(saved)
            restart(wipe_cache=False)
        self.assertTrue(maps_of_database(gone))
        self.assertEqual(q("SELECT deleted_objects > 0 FROM yezzey_gc(dry_run => true)"), "t")
        self.assertTrue(maps_of_database(gone), "a dry run must not forget maps")
        q("SELECT * FROM yezzey_gc()")
        self.assertEqual(maps_of_database(gone), [])
        self.assertLess(len(referenced_objects()), len(names))
        self.assertEqual(objects_in_store(), referenced_objects())

    def test_gc_keeps_retired_objects_for_retention(self):
        """Objects whose last reference was dropped stay for
        yezzey.gc_retention (backups, PITR), then GC deletes them."""
        make_table("ret", rows=20_000)
        q("VACUUM (FREEZE) ret; SELECT * FROM yezzey_offload_relation('ret')")
        before = referenced_objects()
        q("SELECT * FROM yezzey_load_relation('ret')")
        gone = before - referenced_objects()
        self.assertTrue(gone)
        self.assertTrue(retired_ids() >= {object_id(n) for n in gone})
        r = psql("SET yezzey.gc_retention = '1h'; SELECT held_objects FROM yezzey_gc()")
        self.assertGreaterEqual(int(r.stdout.strip()), len(gone))
        self.assertIn("yezzey.gc_retention", r.stderr)
        self.assertTrue(gone <= objects_in_store(), "GC deleted objects within the retention period")
        q("SELECT * FROM yezzey_gc()")  # this cluster's setting: 0
        self.assertEqual(gone & objects_in_store(), set())
        self.assertEqual(retired_ids() & {object_id(n) for n in gone}, set())

    def test_bad_input(self):
        self.assertIn("42P01", error_of("SELECT yezzey_offload_relation('no_such_table')"))
        e = error_of("SELECT yezzey_offload_relation('pg_class')")
        self.assertIn("system catalog", e)
        q("CREATE TEMP TABLE IF NOT EXISTS tmp1 (a int)")
        e = psql("CREATE TEMP TABLE tmp2 (a int); SELECT yezzey_offload_relation('tmp2')", check=False).stderr
        self.assertIn("temporary", e)
        q("DROP TABLE IF EXISTS unl; CREATE UNLOGGED TABLE unl AS SELECT 1 AS a")
        e = error_of("SELECT yezzey_offload_relation('unl')")
        self.assertIn("0A000", e)
        self.assertIn("SET LOGGED", e)
        q("DROP VIEW IF EXISTS v1; CREATE VIEW v1 AS SELECT 1")
        self.assertIn("42809", error_of("SELECT yezzey_offload_relation('v1')"))
        make_table("twice", rows=1000)
        q("SELECT * FROM yezzey_offload_relation('twice')")
        e = error_of("SELECT yezzey_offload_relation('twice')")
        self.assertIn("55000", e)
        self.assertIn("already offloaded", e)
        q("DROP ROLE IF EXISTS nobody; CREATE ROLE nobody LOGIN")
        r = subprocess.run(["psql", "-XAtq", "-U", "nobody", "-d", "postgres", "-c", "SELECT yezzey_offload_relation('twice')"],
                           capture_output=True, text=True, env=ENV)
        self.assertIn("permission denied", r.stderr)


def fault_points_offload():
    return ["before_upload", "after_upload", "after_wal", "after_map", "mid_punch"]


class Crashes(unittest.TestCase):
    """kill -9 of the postmaster at every step of offload and load back."""

    @classmethod
    def setUpClass(cls):
        sh(*PG, "init")
        sh(*PG, "start")
        q("CREATE EXTENSION yezzey")

    @classmethod
    def tearDownClass(cls):
        sh(*PG, "stop", check=False)

    def run_crashing(self, sql, point):
        r = psql(f"SET yezzey.fault_injection = '{point}'; {sql}", check=False)
        self.assertNotEqual(r.returncode, 0, f"fault {point} did not fire")
        # Wait for the postmaster to be gone, then start (crash recovery).
        sh(*PG, "crash", check=False)
        sh(*PG, "start")

    def test_crash_during_offload(self):
        for point in fault_points_offload():
            with self.subTest(point=point):
                t = f"c_{point}"
                make_table(t, rows=30_000)
                q(f"CHECKPOINT")
                expect = checksum(t)
                self.run_crashing(f"SELECT * FROM yezzey_offload_relation('{t}')", point)
                self.assertEqual(checksum(t), expect, f"rows changed after a crash at {point}")
                restart()
                self.assertEqual(checksum(t), expect, f"rows changed after restart, crash at {point}")
                # Finish or redo the offload, then compare again.
                state = q(f"SELECT state FROM yezzey_relation_status('{t}')")
                if state == "local":
                    q(f"SELECT * FROM yezzey_offload_relation('{t}')")
                restart()
                self.assertEqual(checksum(t), expect)
                self.assertEqual(q(f"SELECT state FROM yezzey_relation_status('{t}')"), "offloaded")
        # Nothing leaked that GC cannot find, and GC keeps what is referenced.
        q("SELECT * FROM yezzey_gc()")
        self.assertEqual(objects_in_store(), referenced_objects())

    def test_crash_during_load_back(self):
        for point in ["after_fill", "after_forget"]:
            with self.subTest(point=point):
                t = f"l_{point}"
                make_table(t, rows=30_000)
                expect = checksum(t)
                q(f"SELECT * FROM yezzey_offload_relation('{t}')")
                restart()
                self.run_crashing(f"SELECT * FROM yezzey_load_relation('{t}')", point)
                self.assertEqual(checksum(t), expect)
                q(f"SELECT * FROM yezzey_load_relation('{t}')")
                self.assertEqual(q(f"SELECT state FROM yezzey_relation_status('{t}')"), "local")
                restart()
                self.assertEqual(checksum(t), expect)

    def test_crash_during_drop_database(self):
        """kill -9 after DROP DATABASE removed the files, before its maps
        were forgotten: the database is left invalid, GC keeps its objects,
        and dropping it again releases them."""
        oid = new_database("yz_drop")
        self.run_crashing("DROP DATABASE yz_drop", "after_dropdb")
        self.assertTrue(maps_of_database(oid))
        q("SELECT * FROM yezzey_gc()")
        self.assertTrue(maps_of_database(oid), "GC must not forget the maps of a database still in pg_database")
        self.assertEqual(referenced_objects() - objects_in_store(), set())
        q("DROP DATABASE yz_drop")
        self.assertEqual(maps_of_database(oid), [])
        q("SELECT * FROM yezzey_gc()")
        self.assertEqual(objects_in_store(), referenced_objects())


class Standby(unittest.TestCase):
    """A streaming standby made by pg_basebackup reads the primary's objects
    and replays offload, load back and DROP DATABASE."""

    PORT = int(ENV["PGPORT"]) + 1  # the test cluster's port is below the ephemeral range
    DATA = "standby"

    @classmethod
    def standby(cls, action):
        return other_server(os.path.join(os.environ["YEZZEY_RUN"], cls.DATA), cls.PORT, action)

    @classmethod
    def setUpClass(cls):
        sh(*PG, "init")
        sh(*PG, "start")
        q("CREATE EXTENSION yezzey")
        make_table("in_backup", rows=40_000)
        q("VACUUM (FREEZE) in_backup; SELECT * FROM yezzey_offload_relation('in_backup')")
        restart()
        checksum("in_backup")  # fills the primary's frame cache
        r = sh(*PG, "standby", os.path.join(os.environ["YEZZEY_RUN"], cls.DATA), str(cls.PORT), check=False)
        if r.returncode != 0:
            raise AssertionError(f"pg_basebackup failed: {r.stderr}")
        run = os.environ["YEZZEY_RUN"]
        cls.cache_copied = [os.path.isdir(os.path.join(run, d, "pg_yezzey", "pgsql_tmp_cache"))
                            for d in ("pgdata", cls.DATA)]
        r = cls.standby("start")
        if r.returncode != 0:
            raise AssertionError(f"standby did not start: {r.stderr}")

    @classmethod
    def tearDownClass(cls):
        cls.standby("stop")
        sh(*PG, "stop", check=False)

    def restart_standby(self):
        self.assertEqual(self.standby("stop").returncode, 0)
        subprocess.run(["rm", "-rf", os.path.join(os.environ["YEZZEY_RUN"], self.DATA, "pg_yezzey", "pgsql_tmp_cache")])
        self.assertEqual(self.standby("start").returncode, 0)

    def sq(self, sql, db="postgres"):
        return q(sql, db, port=self.PORT)

    def checksum(self, table):
        return checksum(table, port=self.PORT)

    def caught_up(self):
        lsn = q("SELECT pg_current_wal_flush_lsn()")
        for _ in range(300):
            if self.sq(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'") == "t":
                return
            time.sleep(0.1)
        raise AssertionError("the standby did not replay the primary's WAL within 30 s")

    def copy_local_bytes(self, table, data=None, port=None):
        """Bytes a table's file takes on disk in a copy's data directory
        (the standby's unless told; its path as the server on `port` names
        it), and the file's size."""
        path = q(f"SELECT pg_relation_filepath('{table}')", port=port)
        st = os.stat(os.path.join(os.environ["YEZZEY_RUN"], data or self.DATA, path))
        return st.st_blocks * 512, st.st_size

    def test_standby_follows_offload_writes_and_load_back(self):
        # The base backup carried map files and zero-filled holes, not the
        # frame cache: the standby serves them from the primary's objects.
        self.assertEqual(self.cache_copied, [True, False])
        self.caught_up()
        self.assertEqual(self.sq("SELECT state FROM yezzey_relation_status('in_backup')"), "offloaded")
        self.assertEqual(self.checksum("in_backup"), checksum("in_backup"))

        make_table("after_backup", rows=60_000)
        q("VACUUM (FREEZE) after_backup; CHECKPOINT")
        expect = checksum("after_backup")
        q("SELECT * FROM yezzey_offload_relation('after_backup')")
        self.caught_up()
        self.assertEqual(self.sq("SELECT state FROM yezzey_relation_status('after_backup')"), "offloaded")
        self.assertEqual(self.checksum("after_backup"), expect)
        used, size = self.copy_local_bytes("after_backup")
        self.assertLess(used, size // 4, "redo of the offload must punch the standby's local file")

        q("UPDATE after_backup SET note = 'changed on the primary' WHERE id % 100 = 0")
        self.caught_up()
        self.assertEqual(self.checksum("after_backup"), checksum("after_backup"))
        self.assertIn("25006", psql("SELECT * FROM yezzey_gc()", port=self.PORT, check=False).stderr)

        q("SELECT * FROM yezzey_load_relation('after_backup')")
        self.caught_up()
        self.assertEqual(self.sq("SELECT state FROM yezzey_relation_status('after_backup')"), "local")
        self.assertEqual(self.checksum("after_backup"), checksum("after_backup"))
        # Load back reached the standby's own files through WAL: with the
        # objects collected and the standby restarted (empty buffers and
        # cache), its rows are still all there.
        q("SELECT * FROM yezzey_gc()")
        self.restart_standby()
        self.caught_up()
        self.assertEqual(self.checksum("after_backup"), checksum("after_backup"))
        # A restartpoint (after a checkpoint record) writes replayed pages out.
        q("CHECKPOINT")
        self.caught_up()
        self.sq("CHECKPOINT")
        used, size = self.copy_local_bytes("after_backup")
        self.assertGreater(used, size // 2)

    def test_gc_waits_for_a_stopped_standby(self):
        """Objects dropped while the standby is down are kept (its slot is
        behind the drop) and deleted once it has replayed the drop."""
        make_table("gc_wait", rows=20_000)
        q("VACUUM (FREEZE) gc_wait; SELECT * FROM yezzey_offload_relation('gc_wait')")
        self.caught_up()
        before = referenced_objects()
        self.assertEqual(self.standby("stop").returncode, 0)
        try:
            q("DROP TABLE gc_wait; CHECKPOINT")
            gone = before - referenced_objects()
            self.assertTrue(gone)
            held = int(q("SELECT held_objects FROM yezzey_gc()"))
            self.assertGreaterEqual(held, len(gone))
            self.assertTrue(gone <= objects_in_store(), "GC deleted objects a stopped standby still needs")
        finally:
            self.assertEqual(self.standby("start").returncode, 0)
        self.caught_up()
        for _ in range(100):
            q("SELECT * FROM yezzey_gc()")
            if not gone & objects_in_store():
                break
            time.sleep(0.3)
        self.assertEqual(gone & objects_in_store(), set(), "GC kept the objects after the standby caught up")

    def test_restored_backup_reads_objects_kept_by_retention(self):
        """A base backup taken while a table was offloaded, restored after
        the primary loaded it back and ran GC, still reads the table: the
        objects are shared, and yezzey.gc_retention kept them. The backup is
        sent compressed, as the README advises (the holes' zeros cost next
        to nothing), and written out whole; its first start punches them."""
        make_table("bk", rows=20_000)
        q("VACUUM (FREEZE) bk; SELECT * FROM yezzey_offload_relation('bk')")
        expect = checksum("bk")
        run = os.environ["YEZZEY_RUN"]
        backup, port = os.path.join(run, "backup"), self.PORT + 1
        r = sh(*PG, "standby", backup, str(port), "--compress=server-lz4", check=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        # A restore, not a standby: no signal file, and no slot holding GC.
        os.remove(os.path.join(backup, "standby.signal"))
        q("SELECT pg_drop_replication_slot('yz_backup')")
        before = referenced_objects()
        q("SELECT * FROM yezzey_load_relation('bk')")
        gone = before - referenced_objects()
        self.assertTrue(gone)
        # Once the standby has replayed the load back, only the retention
        # period keeps the objects.
        self.caught_up()
        for _ in range(100):
            r = psql("SET yezzey.gc_retention = '1h'; SELECT * FROM yezzey_gc()")
            if "DETAIL:  0 wait for a standby" in r.stderr:
                break
            time.sleep(0.3)
        self.assertIn("DETAIL:  0 wait for a standby", r.stderr)
        self.assertTrue(gone <= objects_in_store())
        r = other_server(backup, port, "start")
        self.assertEqual(r.returncode, 0, r.stderr)
        try:
            self.assertEqual(q("SELECT state FROM yezzey_relation_status('bk')", port=port), "offloaded")
            self.assertEqual(checksum("bk", port=port), expect)
            used, size = self.copy_local_bytes("bk", data="backup", port=port)
            self.assertLess(used, size // 4, "the restored copy's first start must punch the zeros")
        finally:
            other_server(backup, port, "stop")
            subprocess.run(["rm", "-rf", backup])

    def test_standby_forgets_maps_of_dropped_database(self):
        oid = new_database("yz_standby_drop")
        self.caught_up()
        self.assertTrue(maps_of_database(oid, self.DATA))
        q("DROP DATABASE yz_standby_drop")
        self.caught_up()
        self.assertEqual(maps_of_database(oid, self.DATA), [])


class Faults(unittest.TestCase):
    """The store unreachable, wrong credentials, missing bucket, wrong key, corrupt object."""

    @classmethod
    def setUpClass(cls):
        sh(*PG, "init")
        sh(*PG, "start")
        q("CREATE EXTENSION yezzey")
        make_table("f_off", rows=20_000)
        make_table("f_local", rows=20_000)
        cls.off = checksum("f_off")
        cls.local = checksum("f_local")
        q("SELECT * FROM yezzey_offload_relation('f_off')")

    @classmethod
    def tearDownClass(cls):
        sh(*GARAGE, "start", check=False)
        sh(*PG, "stop", check=False)

    def set(self, **kv):
        for k, v in kv.items():
            q(f"ALTER SYSTEM SET yezzey.{k} = '{v}'")
        q("SELECT pg_reload_conf()")
        time.sleep(0.3)

    def reset(self, *names):
        for n in names:
            q(f"ALTER SYSTEM RESET yezzey.{n}")
        q("SELECT pg_reload_conf()")
        time.sleep(0.3)

    def test_store_unreachable(self):
        restart()
        sh(*GARAGE, "stop")
        try:
            self.set(timeout=2)
            t0 = time.time()
            e = error_of("SELECT count(*) FROM f_off")
            self.assertLess(time.time() - t0, 30, "a query on offloaded data must fail within the timeout")
            self.assertIn("08006", e)
            self.assertIn("HINT", e)
            self.assertEqual(checksum("f_local"), self.local, "local relations must be unaffected")
            make_table("f_new", rows=1000)
            e = error_of("SELECT yezzey_offload_relation('f_new')")
            self.assertIn("08006", e)
            self.assertEqual(q("SELECT state FROM yezzey_relation_status('f_new')"), "local")
        finally:
            sh(*GARAGE, "start")
            self.reset("timeout")
        self.assertEqual(checksum("f_off"), self.off)

    def test_wrong_credentials_and_missing_bucket(self):
        restart()
        self.set(s3_secret_access_key="0" * 64)
        try:
            e = error_of("SELECT count(*) FROM f_off")
            self.assertIn("28000", e)
        finally:
            self.reset("s3_secret_access_key")
        self.set(storage_url="s3://no-such-bucket-yezzey/pg")
        try:
            make_table("f_nb", rows=1000)
            e = error_of("SELECT yezzey_offload_relation('f_nb')")
            self.assertIn("does not exist", e)
        finally:
            self.reset("storage_url")
        self.assertEqual(checksum("f_off"), self.off)

    def test_wrong_key(self):
        restart()
        keyfile = os.path.join(os.environ["YEZZEY_RUN"], "other.key")
        with open(keyfile, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        os.chmod(keyfile, 0o644)
        self.set(key_file=keyfile)
        try:
            e = error_of("SELECT count(*) FROM f_off")
            self.assertIn("28000", e)
            self.assertIn("key id", e)
        finally:
            self.reset("key_file")
        self.assertEqual(checksum("f_off"), self.off)

    def test_corrupt_object(self):
        make_table("f_bad", rows=20_000)
        q("SELECT * FROM yezzey_offload_relation('f_bad')")
        restart()
        rel = q("SELECT pg_relation_filenode('f_bad')")
        name = next(n for n in referenced_objects() if f"/{rel}/main." in n)
        tool = os.path.join(ROOT, "target/release/yezzey-tool")
        env = dict(os.environ, YEZZEY_STORAGE_URL=f"s3://{os.environ['YEZZEY_BUCKET']}/pg")
        # Flip one byte in the stored object, as bit rot or tampering would.
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "obj")
            subprocess.run([tool, "get-raw", name, path], env=env, check=True)
            with open(path, "rb") as fh:
                data = bytearray(fh.read())
            data[len(data) // 3] ^= 0xFF
            with open(path, "wb") as fh:
                fh.write(data)
            subprocess.run([tool, "put-raw", path, name], env=env, check=True)
        subprocess.run(["rm", "-rf", os.path.join(os.environ["YEZZEY_RUN"], "pgdata/pg_yezzey/pgsql_tmp_cache")])
        restart()
        e = error_of("SELECT count(*), max(note) FROM f_bad")
        self.assertIn("XX001", e)
        self.assertEqual(checksum("f_local"), self.local)


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print(f"offload tests: {result.testsRun - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
