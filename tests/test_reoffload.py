"""Offloading again what changed (issue 20): a relation written, shrunk by
VACUUM and grown at its end after its offload is offloaded again without
a load back, as layers of its changed blocks over its objects, merged
into new objects past yezzey.max_layers; standbys, crash recovery,
backups and GC follow.

Every check compares full-table checksums with a local mirror (the same
rows, changed by the same statements, never offloaded), and amcheck.
"""
import os
import random
import subprocess
import time
import unittest

import yz
from yz import MAIN, make_table

ROWS = 2_000_000


def change(c, table, r):
    """Round r's changes: scattered updates, deletes (then VACUUM), and
    rows appended at the end; on the table and its mirror alike."""
    for t in (table, f"{table}_m"):
        c.q(f"""UPDATE {t} SET amount = -{r}, note = note || '+{r}' WHERE id % 997 = {r};
DELETE FROM {t} WHERE id % 1009 = {r};
INSERT INTO {t}
SELECT g, date '2024-01-01' + (g % 365), g / 7.0, md5(g::text) || '{r}'
  FROM generate_series({ROWS + r * 10_000}, {ROWS + r * 10_000 + 4_999}) g;
VACUUM {t};""")


def layers(c, table):
    """Layers per segment of a table's heap, in segment order."""
    return [int(x) for x in c.q(
        "SELECT s.layers FROM yezzey_segments() s JOIN pg_class c ON c.relfilenode = s.relfilenode "
        f"WHERE c.oid = '{table}'::regclass AND s.fork = 'main' ORDER BY s.segno").split()]


def reoffload(c, table, max_layers=None):
    """Offloads `table` again; the raw bytes it uploaded for the table."""
    setting = f"SET yezzey.max_layers = {max_layers}; " if max_layers is not None else ""
    out = c.psql(f"{setting}SELECT relation, local_bytes FROM yezzey_offload_relation('{table}')")
    rows = dict(r.split("|") for r in out.stdout.split())
    return int(rows[table])


def heap_and_index_ok(c, table):
    c.q(f"SELECT bt_index_check('{table}_pkey', true)")
    return c.q(f"SELECT count(*) FROM verify_heapam('{table}')") == "0"


class Reoffload(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        MAIN.init().start()
        MAIN.q("CREATE EXTENSION yezzey; CREATE EXTENSION amcheck")

    @classmethod
    def tearDownClass(cls):
        MAIN.stop(check=False)

    def mirrored(self, name, rows=ROWS):
        make_table(MAIN, name, rows=rows)
        MAIN.q(f"DROP TABLE IF EXISTS {name}_m; CREATE TABLE {name}_m AS SELECT * FROM {name}; "
               f"ALTER TABLE {name}_m ADD PRIMARY KEY (id); VACUUM (FREEZE) {name}; "
               f"SELECT * FROM yezzey_offload_relation('{name}')")
        self.same(MAIN, name)

    def same(self, c, name, why=""):
        self.assertEqual(c.checksum(name), MAIN.checksum(f"{name}_m"), f"{c.name}: {name} {why}")

    def assert_no_garbage_after_gc(self):
        MAIN.q("SELECT * FROM yezzey_gc()")
        self.assertEqual(yz.store_yz_objects(MAIN.system_id()), MAIN.referenced_objects())

    def test_rounds_of_changes_with_a_standby_and_a_backup(self):
        """Several rounds of updates, deletes with VACUUM and appends, each
        offloaded again as a layer or merged into new objects: the rows stay
        those of the mirror on the primary
        and on a standby, amcheck is clean, nothing is local afterwards
        (also on the standby), a base backup taken between two rounds
        restores to its rows after later rounds and GC, and GC then keeps
        exactly what a map, the backup or nothing else needs."""
        self.mirrored("ev")
        size = int(MAIN.q("SELECT pg_relation_size('ev_m')"))
        self.assertGreater(size, 80 << 20)
        standby = MAIN.standby("ro_standby", yz.other_port(1))
        copy = None
        # Base backups are kept for an hour (these servers keep none by default).
        MAIN.q("ALTER SYSTEM SET yezzey.backup_retention = '1h'; SELECT pg_reload_conf()")
        try:
            standby.start()
            backup_rows = None
            history = [0]
            for r in range(1, 6):
                change(MAIN, "ev", r)
                # Status counts the local pages: those still in buffers first.
                MAIN.q("CHECKPOINT")
                state, local = MAIN.status("ev")
                self.assertEqual(state, "partially offloaded")
                self.assertGreater(local, 0)
                max_layers = 2 if r < 5 else 0
                again = int(MAIN.psql(f"SET yezzey.max_layers = {max_layers}; "
                                      "SELECT reoffload_bytes FROM yezzey_relation_status('ev')").stdout)
                self.assertGreater(again, 0)
                old = MAIN.referenced_objects()
                t0 = time.time()
                uploaded = reoffload(MAIN, "ev", max_layers)
                took = time.time() - t0
                print(f"\n  round {r}: {local / 2**20:.1f} MB local -> re-offloaded {uploaded / 2**20:.1f} MB "
                      f"of {size / 2**20:.0f} MB in {took:.1f}s, layers {layers(MAIN, 'ev')}")
                self.assertEqual(uploaded, again, "a re-offload uploads what status announced")
                # A round adds a layer of the changed blocks, or merges the
                # layers into a new object once they would be more than two
                # or hold more than half the blocks; the last round merges
                # (yezzey.max_layers = 0).
                (now,) = layers(MAIN, "ev")
                if r == 1 or now == history[-1] + 1:
                    self.assertLess(uploaded, size // 2, f"round {r}: a layer holds the changed blocks only")
                else:
                    self.assertEqual(now, 0, f"round {r}: merged")
                    self.assertGreaterEqual(uploaded, size * 9 // 10, f"round {r}: merged")
                self.assertEqual(now, {1: 1, 5: 0}.get(r, now), f"round {r}")
                history.append(now)
                self.assertEqual(MAIN.status("ev"), ("offloaded", 0), f"round {r}")
                self.assertEqual(MAIN.q("SELECT reoffload_bytes FROM yezzey_relation_status('ev')"), "0")
                self.assertNotEqual(MAIN.referenced_objects(), old, "new objects")
                self.same(MAIN, "ev", f"round {r}")
                self.assertTrue(heap_and_index_ok(MAIN, "ev"), f"round {r}: verify_heapam")
                standby.caught_up_with(MAIN)
                self.same(standby, "ev", f"round {r}")
                self.assertEqual(standby.status("ev"), ("offloaded", 0), f"standby, round {r}")
                if r == 2:
                    copy = MAIN.backup("ro_backup", yz.other_port(2))
                    backup_rows = MAIN.checksum("ev_m")
            MAIN.restart(wipe_cache=True)
            self.same(MAIN, "ev", "after a restart with an empty cache")
            self.assertTrue(heap_and_index_ok(MAIN, "ev"))
            standby.restart(wipe_cache=True)
            standby.caught_up_with(MAIN)
            self.same(standby, "ev", "after a restart with an empty cache")
            self.assertIn(0, history[3:], "a merge between the backup and its restore")
            # GC keeps what the backup (taken before rounds 3 to 5) needs.
            MAIN.q("CHECKPOINT; SELECT * FROM yezzey_gc()")
            self.assertIn("retired after the backup", MAIN.q(
                "SELECT string_agg(DISTINCT reason, ';') FROM yezzey_gc_plan() WHERE verdict = 'hold'"))
            copy.start()
            self.assertEqual(copy.checksum("ev"), backup_rows, "the backup between two re-offloads")
            copy.restart(wipe_cache=True)
            self.assertEqual(copy.checksum("ev"), backup_rows)
            self.assertTrue(heap_and_index_ok(copy, "ev"))
            gone = copy.member()
        finally:
            MAIN.q("ALTER SYSTEM RESET yezzey.backup_retention; SELECT pg_reload_conf()")
            standby.remove()
            if copy:
                copy.remove()
        # The standby and the restored copy are gone for good, the backups
        # expired: GC keeps exactly what this cluster's maps name.
        MAIN.q(f"SELECT yezzey_forget_member('{gone}')")
        time.sleep(0.3)
        self.assert_no_garbage_after_gc()
        self.same(MAIN, "ev", "after GC")

    def test_appends_upload_only_the_new_blocks(self):
        """An append-only table (AO segments grow this way) offloaded again
        after each batch of inserts uploads the new blocks and the page
        the batch began in, and reads the same rows in every round."""
        # Rows of one width, as an append-only log has: no page keeps room
        # for another, so new rows go to new pages (and the last one).
        rows = "SELECT g, date '2024-01-01', 1.5, md5(g::text) FROM generate_series({}, {}) g"
        for t in ("ap", "ap_m"):
            MAIN.q(f"DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int PRIMARY KEY, day date, amount numeric, note text); "
                   f"INSERT INTO {t} {rows.format(1, 200_000)}; VACUUM (FREEZE) {t}")
        MAIN.q("SELECT * FROM yezzey_offload_relation('ap')")
        # pg_relation_size() counts the local files: the table's length in
        # blocks is what the storage manager says.
        nblocks = "SELECT logical_bytes / 8192 FROM yezzey_relation_status('ap')"
        blocks = int(MAIN.q(nblocks))
        for r in range(1, 4):
            for t in ("ap", "ap_m"):
                MAIN.q(f"INSERT INTO {t} {rows.format(300_000 * r, 300_000 * r + 19_999)}; VACUUM (FREEZE) {t}")
            now = int(MAIN.q(nblocks))
            uploaded = reoffload(MAIN, "ap")
            print(f"\n  round {r}: {now - blocks} new blocks, uploaded {uploaded // 8192} blocks")
            self.assertGreaterEqual(uploaded // 8192, now - blocks)
            self.assertLessEqual(uploaded // 8192, now - blocks + 1, f"round {r}")
            self.assertEqual(layers(MAIN, "ap"), [r])
            self.assertEqual(MAIN.status("ap"), ("offloaded", 0))
            self.same(MAIN, "ap", f"round {r}")
            blocks = now
        MAIN.restart(wipe_cache=True)
        self.same(MAIN, "ap", "after a restart with an empty cache")
        self.assertTrue(heap_and_index_ok(MAIN, "ap"))
        # Loaded back, layers included.
        MAIN.q("SELECT * FROM yezzey_load_relation('ap')")
        self.assertEqual(MAIN.status("ap")[0], "local")
        self.same(MAIN, "ap", "loaded back")

    def test_truncated_and_grown_back_then_repaired(self):
        """A table whose end VACUUM truncated, then grown back past it,
        offloaded again after each: the layers hold the blocks it grew
        back, so no older object's copy of the truncated end shows through
        (deleted rows would come back); and a map rebuilt from the objects
        alone (its file deleted) takes the newest layer's length."""
        self.mirrored("tg", rows=200_000)
        size = "SELECT logical_bytes FROM yezzey_relation_status('tg')"
        before = int(MAIN.q(size))
        for t in ("tg", "tg_m"):
            MAIN.q(f"DELETE FROM {t} WHERE id > 120000; VACUUM {t}")
        truncated = int(MAIN.q(size))
        self.assertLess(truncated, before)
        reoffload(MAIN, "tg")
        self.same(MAIN, "tg", "truncated")
        for t in ("tg", "tg_m"):
            MAIN.q(f"INSERT INTO {t} SELECT g, date '2024-01-01', 1.5, md5(g::text) "
                   f"FROM generate_series(500000, 520000) g; VACUUM (FREEZE) {t}")
        reoffload(MAIN, "tg")
        now = int(MAIN.q(size))
        self.assertTrue(truncated < now < before, "grown back part of the way")
        self.assertEqual(layers(MAIN, "tg"), [2])
        self.assertEqual(MAIN.status("tg"), ("offloaded", 0))
        self.same(MAIN, "tg", "grown back")
        MAIN.restart(wipe_cache=True)
        self.same(MAIN, "tg", "after a restart with an empty cache")
        self.assertTrue(heap_and_index_ok(MAIN, "tg"))
        # The map file lost: rebuilt from the objects, layers included.
        MAIN.q("CHECKPOINT")
        rel = MAIN.q("SELECT pg_relation_filenode('tg')")
        maps = os.path.join(MAIN.data, "pg_yezzey", "map")
        path = next(os.path.join(maps, f) for f in os.listdir(maps)
                    if f.split("_")[2:3] == [rel] and f.endswith("_0.json"))
        MAIN.stop()
        os.remove(path)
        MAIN.start()
        self.assertEqual(MAIN.q("SELECT outcome FROM yezzey_repair_maps()"), "rebuilt from the store")
        self.assertEqual(layers(MAIN, "tg"), [2])
        self.same(MAIN, "tg", "map rebuilt from the store")
        self.assertTrue(heap_and_index_ok(MAIN, "tg"))

    def test_readers_during_a_reoffload(self):
        """Queries running all along a re-offload (setting hint bits,
        pruning pages) see the same rows; the relation ends offloaded, at
        once or by the next re-offload if readers kept it busy."""
        self.mirrored("busy", rows=300_000)
        change(MAIN, "busy", 1)
        reader = subprocess.Popen(
            ["bash", "-c", f"for i in $(seq 200); do psql -XAtq -p {MAIN.port} -c "
             "'SELECT count(*), sum(amount) FROM busy WHERE id % 3 = 0' || exit 1; done"],
            env=yz.ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            MAIN.q("SELECT * FROM yezzey_offload_relation('busy')")
        finally:
            reader.kill()
            reader.wait()
        self.same(MAIN, "busy", "with readers")
        if MAIN.status("busy")[0] != "offloaded":
            MAIN.q("SELECT * FROM yezzey_offload_relation('busy')")
        self.assertEqual(MAIN.status("busy"), ("offloaded", 0))
        MAIN.restart(wipe_cache=True)
        self.same(MAIN, "busy")
        self.assertTrue(heap_and_index_ok(MAIN, "busy"))

    def test_crash_at_each_step_and_at_random_moments(self):
        """kill -9 at each step of a re-offload that adds a layer and of one
        that merges, and at random moments of both: afterwards the rows are
        the mirror's, the relation offloaded or partially offloaded,
        offloading again finishes, and GC finds every object a killed
        upload left."""
        self.mirrored("cr", rows=400_000)
        MAIN.q("CHECKPOINT")
        # How long a re-offload takes, to pick moments within it.
        change(MAIN, "cr", 1)
        t0 = time.time()
        MAIN.q("SELECT * FROM yezzey_offload_relation('cr')")
        took = time.time() - t0
        outcomes = []
        # Each killed re-offload adds a layer, or merges (yezzey.max_layers 0).
        points = ("before_upload", "after_upload", "after_wal", "mid_reoffload_evict")
        moments = [("point", p, merge) for merge in (False, True) for p in points]
        moments += [("at", random.uniform(0, took * 1.1), i % 2 == 1) for i in range(4)]
        for r, (kind, what, merge) in enumerate(moments, start=2):
            change(MAIN, "cr", r)
            max_layers = 0 if merge else 8
            if kind == "point":
                res = MAIN.psql(f"SET yezzey.fault_injection = '{what}'; SET yezzey.max_layers = {max_layers}; "
                                "SELECT * FROM yezzey_offload_relation('cr')", check=False)
                self.assertNotEqual(res.returncode, 0, f"fault {what} did not fire")
                MAIN.crash()
            else:
                p = yz.offload_in_background(MAIN, "cr", f"-c yezzey.max_layers={max_layers}")
                time.sleep(what)
                MAIN.crash()
                p.wait()
                what = f"{what:.2f}s"
            what += " merging" if merge else " layering"
            res = MAIN.start(check=False)
            self.assertEqual(res.returncode, 0, f"start failed after a kill at {what}{MAIN.log_tail()}")
            state = MAIN.status("cr")[0]
            outcomes.append((what, state, layers(MAIN, "cr")))
            self.assertIn(state, ("offloaded", "partially offloaded"), what)
            self.same(MAIN, "cr", f"after a kill at {what}")
            MAIN.q("SELECT * FROM yezzey_offload_relation('cr')")
            self.assertEqual(MAIN.status("cr"), ("offloaded", 0), what)
            MAIN.restart(wipe_cache=True)
            self.same(MAIN, "cr", f"kill at {what}, offloaded again, restarted")
            self.assertTrue(heap_and_index_ok(MAIN, "cr"), what)
            self.assert_no_garbage_after_gc()
        print(f"\n  a re-offload took {took:.2f}s; kills, outcomes and layers: {outcomes}")

    def test_refused_before_the_record_leaves_it_as_it_was(self):
        """A re-offload refused for want of map memory (after uploading,
        before its record) changes nothing and leaves nothing in the store
        after GC."""
        self.mirrored("lim", rows=50_000)
        change(MAIN, "lim", 1)
        before = MAIN.referenced_objects()
        MAIN.q("ALTER SYSTEM SET yezzey.max_map_memory = '64kB'; SELECT pg_reload_conf()")
        time.sleep(0.3)
        try:
            e = MAIN.error_of("SELECT * FROM yezzey_offload_relation('lim')")
        finally:
            MAIN.q("ALTER SYSTEM RESET yezzey.max_map_memory; SELECT pg_reload_conf()")
            time.sleep(0.3)
        self.assertIn("53200", e)
        self.assertIn("again", e)
        self.assertEqual(MAIN.referenced_objects(), before)
        self.assertEqual(MAIN.status("lim")[0], "partially offloaded")
        self.same(MAIN, "lim")
        self.assert_no_garbage_after_gc()
        MAIN.q("SELECT * FROM yezzey_offload_relation('lim')")
        self.assertEqual(MAIN.status("lim"), ("offloaded", 0))
        self.same(MAIN, "lim")


if __name__ == "__main__":
    yz.run(__name__)
