"""kill -9 at every step of offload and load back, and at random moments;
recovery right after an offload; descriptor bounds. Every server runs
under the open-file limit its OS user gets by default (soft 1024, set by
scripts/pg.sh), as in production.
"""
import os
import random
import subprocess
import threading
import time
import unittest

import yz
from yz import MAIN, make_table, make_wide_table


def fault_points_offload():
    return ["before_upload", "after_upload", "after_wal", "after_map", "mid_punch"]


class FdSampler:
    """Samples the descriptors of a cluster's startup process while it runs."""

    def __init__(self):
        self.most = 0
        self.sockets = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            r = subprocess.run(["pgrep", "-u", "postgres", "-f", "postgres: startup"],
                               capture_output=True, text=True)
            for pid in r.stdout.split():
                try:
                    fds = [os.readlink(f"/proc/{pid}/fd/{f}") for f in os.listdir(f"/proc/{pid}/fd")]
                except (FileNotFoundError, ProcessLookupError):
                    continue
                if len(fds) > self.most:
                    self.most = len(fds)
                    self.sockets = sum(1 for f in fds if f.startswith("socket:"))
            time.sleep(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


class Crashes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        MAIN.init().start()
        MAIN.q("CREATE EXTENSION yezzey")

    @classmethod
    def tearDownClass(cls):
        MAIN.stop(check=False)

    def run_crashing(self, sql, point):
        r = MAIN.psql(f"SET yezzey.fault_injection = '{point}'; {sql}", check=False)
        self.assertNotEqual(r.returncode, 0, f"fault {point} did not fire")
        MAIN.crash()  # waits for the postmaster and its children to be gone
        MAIN.start()

    def assert_no_garbage_after_gc(self):
        MAIN.q("SELECT * FROM yezzey_gc()")
        self.assertEqual(yz.store_yz_objects(MAIN.system_id()), MAIN.referenced_objects())

    def test_crash_during_offload(self):
        for point in fault_points_offload():
            with self.subTest(point=point):
                t = f"c_{point}"
                make_table(MAIN, t, rows=30_000)
                MAIN.q("CHECKPOINT")
                expect = MAIN.checksum(t)
                self.run_crashing(f"SELECT * FROM yezzey_offload_relation('{t}')", point)
                self.assertEqual(MAIN.checksum(t), expect, f"rows changed after a crash at {point}")
                MAIN.restart()
                self.assertEqual(MAIN.checksum(t), expect, f"rows changed after restart, crash at {point}")
                state = MAIN.status(t)[0]
                self.assertIn(state, ("local", "offloaded"), f"crash at {point}")
                if state == "local":
                    MAIN.q(f"SELECT * FROM yezzey_offload_relation('{t}')")
                MAIN.restart()
                self.assertEqual(MAIN.checksum(t), expect)
                self.assertEqual(MAIN.status(t)[0], "offloaded")
        # Nothing leaked that GC cannot find, and GC keeps what is referenced.
        self.assert_no_garbage_after_gc()

    def test_crash_during_load_back(self):
        for point in ["after_fill", "after_forget"]:
            with self.subTest(point=point):
                t = f"l_{point}"
                make_table(MAIN, t, rows=30_000)
                expect = MAIN.checksum(t)
                MAIN.q(f"SELECT * FROM yezzey_offload_relation('{t}')")
                MAIN.restart()
                self.run_crashing(f"SELECT * FROM yezzey_load_relation('{t}')", point)
                self.assertEqual(MAIN.checksum(t), expect)
                MAIN.q(f"SELECT * FROM yezzey_load_relation('{t}')")
                self.assertEqual(MAIN.status(t)[0], "local")
                MAIN.restart()
                self.assertEqual(MAIN.checksum(t), expect)

    def test_crash_during_drop_database(self):
        """kill -9 after DROP DATABASE removed the files, before its maps
        were forgotten: the database is left invalid, GC keeps its objects,
        and dropping it again releases them."""
        oid = yz.database_with_offloaded_table(MAIN, "yz_drop")
        self.run_crashing("DROP DATABASE yz_drop", "after_dropdb")
        self.assertGreater(yz.offloaded_files_of_database(MAIN, oid), 0)
        MAIN.q("SELECT * FROM yezzey_gc()")
        self.assertGreater(yz.offloaded_files_of_database(MAIN, oid), 0,
                           "GC must not forget the maps of a database still in pg_database")
        self.assertEqual(MAIN.referenced_objects() - yz.store_yz_objects(MAIN.system_id()), set())
        MAIN.q("DROP DATABASE yz_drop")
        self.assertEqual(yz.offloaded_files_of_database(MAIN, oid), 0)
        self.assert_no_garbage_after_gc()

    def test_crash_right_after_offload_recovers_first_time_and_stays_offloaded(self):
        """The DBA's sequence: a checkpoint, a table created, frozen and
        offloaded, then a power cut before the next checkpoint. Recovery
        replays the table's creation against the offloaded relation: it
        must succeed on the first start under the default descriptor limit,
        and leave the relation offloaded (pages from before the offload are
        the object's, never written back)."""
        for rows in (300_000, 1_500_000):
            with self.subTest(rows=rows):
                t = f"rk_{rows}"
                MAIN.q("CHECKPOINT")
                make_wide_table(MAIN, t, rows)
                MAIN.q(f"VACUUM (FREEZE) {t}")
                expect = MAIN.checksum(t, order="id")
                MAIN.q(f"SELECT * FROM yezzey_offload_relation('{t}')")
                self.assertEqual(MAIN.status(t), ("offloaded", 0))
                MAIN.crash()
                with FdSampler() as fds:
                    r = MAIN.start(check=False)
                self.assertEqual(r.returncode, 0, f"the first start after the crash failed: {r.stderr}{MAIN.log_tail()}")
                print(f"\n  {rows} rows: startup process held at most {fds.most} descriptors ({fds.sockets} sockets)")
                self.assertLess(fds.most, 200)
                state, local = MAIN.status(t)
                self.assertEqual(state, "offloaded")
                self.assertLess(local, 64 * 1024)
                MAIN.restart(wipe_cache=True)
                self.assertEqual(MAIN.checksum(t, order="id"), expect)
                self.assertEqual(MAIN.status(t)[0], "offloaded")
                MAIN.q(f"DROP TABLE {t}")

    def test_kill_at_random_moments_of_an_offload(self):
        """kill -9 of the postmaster at a random moment while a table of a
        few hundred MB is offloaded: afterwards the table is local or
        offloaded, never half of each, its rows are the same, offloading
        again works, and GC finds every object a killed upload left."""
        make_wide_table(MAIN, "big_src", 1_500_000)
        MAIN.q("VACUUM (FREEZE) big_src")
        expect = MAIN.checksum("big_src", order="id")
        size = int(MAIN.q("SELECT pg_relation_size('big_src')"))
        self.assertGreater(size, 200 << 20)
        # How long an offload of it takes, to pick moments within it.
        MAIN.q("CREATE TABLE big AS SELECT * FROM big_src; VACUUM (FREEZE) big; CHECKPOINT")
        t0 = time.time()
        MAIN.q("SELECT * FROM yezzey_offload_relation('big')")
        took = time.time() - t0
        MAIN.q("DROP TABLE big")
        outcomes = []
        for trial in range(4):
            MAIN.q("CREATE TABLE big AS SELECT * FROM big_src; VACUUM (FREEZE) big")
            at = random.uniform(0, took * 1.1)
            p = yz.offload_in_background(MAIN, "big")
            time.sleep(at)
            MAIN.crash()
            p.wait()
            r = MAIN.start(check=False)
            self.assertEqual(r.returncode, 0, f"trial {trial}: start failed after kill at {at:.2f}s{MAIN.log_tail()}")
            state = MAIN.status("big")[0]
            outcomes.append((round(at, 2), state))
            self.assertIn(state, ("local", "offloaded"), f"trial {trial}: killed at {at:.2f}s of {took:.2f}s")
            self.assertEqual(MAIN.checksum("big", order="id"), expect, f"trial {trial}")
            if state == "local":
                MAIN.q("SELECT * FROM yezzey_offload_relation('big')")
            self.assertEqual(MAIN.status("big"), ("offloaded", 0))
            MAIN.restart(wipe_cache=True)
            self.assertEqual(MAIN.checksum("big", order="id"), expect, f"trial {trial}, offloaded")
            MAIN.q("DROP TABLE big")
            self.assert_no_garbage_after_gc()
        print(f"\n  offload took {took:.2f}s; kills (s) and outcomes: {outcomes}")

    def test_thousands_of_partitions_in_one_backend_under_256_descriptors(self):
        """A query over 2,000 offloaded partitions in one backend of a server
        limited to 256 open files: every segment is read from its object, and
        the backend's descriptors stay bounded."""
        parts = 2000
        MAIN.q("DROP TABLE IF EXISTS many")
        MAIN.q("CREATE TABLE many (id int, v int) PARTITION BY RANGE (id)")
        MAIN.q(f"""SELECT format('CREATE TABLE many_%s PARTITION OF many FOR VALUES FROM (%s) TO (%s)', i, i * 10, i * 10 + 10)
                    FROM generate_series(0, {parts - 1}) i \\gexec""")
        MAIN.q(f"INSERT INTO many SELECT g, g % 97 FROM generate_series(0, {parts * 10 - 1}) g; VACUUM (FREEZE) many")
        expect = MAIN.q("SELECT count(*), sum(v), sum(hashint4(id)) FROM many")
        t0 = time.time()
        n = MAIN.q("SELECT count(*) FROM yezzey_offload_relation('many')")
        print(f"\n  offloaded {n} partitions in {time.time() - t0:.1f}s")
        self.assertEqual(int(n), parts)
        MAIN.stop()
        MAIN.wipe_cache()
        MAIN.start(nofile=256)
        try:
            p = subprocess.Popen(["psql", "-XAtq", "-p", str(MAIN.port), "-d", "postgres"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=yz.ENV)
            p.stdin.write("SELECT pg_backend_pid();\n")
            p.stdin.flush()
            pid = int(p.stdout.readline())
            most, most_ours = 0, 0
            done = threading.Event()

            def sample():
                nonlocal most, most_ours
                while not done.is_set():
                    try:
                        fds = [os.readlink(f"/proc/{pid}/fd/{f}") for f in os.listdir(f"/proc/{pid}/fd")]
                    except (FileNotFoundError, ProcessLookupError):
                        continue
                    # PostgreSQL's own relation files are its business (and
                    # bounded by max_safe_fds); these are yezzey's.
                    ours = [f for f in fds if f.startswith(("socket:", "anon_inode:")) or "pg_yezzey" in f]
                    most, most_ours = max(most, len(fds)), max(most_ours, len(ours))
                    time.sleep(0.01)

            s = threading.Thread(target=sample, daemon=True)
            s.start()
            p.stdin.write("SET max_parallel_workers_per_gather = 0;\n"
                          "SELECT count(*), sum(v), sum(hashint4(id)) FROM many;\n")
            p.stdin.flush()
            got = p.stdout.readline().strip()
            done.set()
            s.join()
            p.stdin.close()
            err = p.stderr.read()
            p.wait()
            self.assertEqual(got, expect, err)
            print(f"  the backend held at most {most} descriptors, {most_ours} of them yezzey's")
            self.assertLessEqual(most, 256)
            self.assertLess(most_ours, 60)
        finally:
            MAIN.restart(wipe_cache=False)


if __name__ == "__main__":
    yz.run(__name__)
