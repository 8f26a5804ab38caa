"""Clusters of one lineage sharing objects: streaming standbys, restored
base backups, clones, a promoted standby, a PITR restore on a new
timeline. None of them ever deletes an object another still needs; every
one of them reads the same rows, after a restart with an empty cache.
"""
import os
import random
import subprocess
import time
import unittest

import yz
from yz import MAIN, Cluster, make_table, make_wide_table

ARCHIVE = os.path.join(yz.RUN, "wal_archive")


def objects_of(c, table, db="postgres"):
    return set(c.q(f"""SELECT object FROM yezzey_segments()
                         WHERE relfilenode = pg_relation_filenode('{table}')""", db).split())


class Lineage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        subprocess.run(["rm", "-rf", ARCHIVE], check=True)
        os.makedirs(ARCHIVE)
        st = os.stat(yz.RUN)
        os.chown(ARCHIVE, st.st_uid, st.st_gid)
        MAIN.init()
        MAIN.conf(f"archive_mode = on\narchive_command = 'test ! -f {ARCHIVE}/%f && cp %p {ARCHIVE}/%f'")
        MAIN.start()
        MAIN.q("CREATE EXTENSION yezzey")
        cls.sysid = MAIN.system_id()

    @classmethod
    def tearDownClass(cls):
        for name in ("standby", "copy_b", "promoted", "pitr", "backup"):
            Cluster(name, 0).stop(check=False)
        MAIN.stop(check=False)

    def tearDown(self):
        # A test's slots must not hold the next test's garbage.
        MAIN.q("SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE NOT active")

    def in_store(self):
        return yz.store_yz_objects(self.sysid)

    # --- streaming standbys ---

    def test_standby_follows_offload_writes_and_load_back(self):
        make_table(MAIN, "in_backup", rows=40_000)
        MAIN.q("VACUUM (FREEZE) in_backup; SELECT * FROM yezzey_offload_relation('in_backup')")
        MAIN.restart()
        MAIN.checksum("in_backup")  # fills the primary's frame cache
        s = MAIN.standby("standby", yz.other_port(1))
        try:
            # The base backup carried map files and zero-filled holes, not the
            # frame cache: the standby serves them from the primary's objects.
            self.assertFalse(os.path.isdir(os.path.join(s.data, "pg_yezzey", "pgsql_tmp_cache")))
            s.start()
            s.caught_up_with(MAIN)
            self.assertEqual(s.status("in_backup")[0], "offloaded")
            self.assertEqual(s.checksum("in_backup"), MAIN.checksum("in_backup"))

            make_table(MAIN, "after_backup", rows=60_000)
            MAIN.q("VACUUM (FREEZE) after_backup; CHECKPOINT")
            expect = MAIN.checksum("after_backup")
            MAIN.q("SELECT * FROM yezzey_offload_relation('after_backup')")
            s.caught_up_with(MAIN)
            self.assertEqual(s.status("after_backup")[0], "offloaded")
            self.assertEqual(s.checksum("after_backup"), expect)
            used, size = s.local_bytes("after_backup")
            self.assertLess(used, 64 * 1024, "redo of the offload must free the standby's local file")

            MAIN.q("UPDATE after_backup SET note = 'changed on the primary' WHERE id % 100 = 0")
            s.caught_up_with(MAIN)
            self.assertEqual(s.checksum("after_backup"), MAIN.checksum("after_backup"))
            self.assertIn("25006", s.error_of("SELECT * FROM yezzey_gc()"))

            MAIN.q("SELECT * FROM yezzey_load_relation('after_backup')")
            s.caught_up_with(MAIN)
            self.assertEqual(s.status("after_backup")[0], "local")
            self.assertEqual(s.checksum("after_backup"), MAIN.checksum("after_backup"))
            # Load back reached the standby's own files through WAL: with the
            # objects collected and the standby restarted (empty buffers and
            # cache), its rows are still all there.
            MAIN.q("SELECT * FROM yezzey_gc()")
            s.restart(wipe_cache=True)
            s.caught_up_with(MAIN)
            self.assertEqual(s.checksum("after_backup"), MAIN.checksum("after_backup"))
            MAIN.q("CHECKPOINT")
            s.caught_up_with(MAIN)
            s.q("CHECKPOINT")
            used, size = s.local_bytes("after_backup")
            self.assertGreater(used, size // 2)

            # GC waits for the stopped standby: objects dropped while it is
            # down are kept (its slot is behind the drop), then deleted.
            make_table(MAIN, "gc_wait", rows=20_000)
            MAIN.q("VACUUM (FREEZE) gc_wait; SELECT * FROM yezzey_offload_relation('gc_wait')")
            s.caught_up_with(MAIN)
            gone = objects_of(MAIN, "gc_wait")
            s.stop()
            MAIN.q("DROP TABLE gc_wait; CHECKPOINT")
            held = int(MAIN.q("SELECT held_objects FROM yezzey_gc()"))
            self.assertGreaterEqual(held, len(gone))
            self.assertTrue(gone <= self.in_store(), "GC deleted objects a stopped standby still needs")
            s.start()
            s.caught_up_with(MAIN)
            for _ in range(100):
                MAIN.q("SELECT * FROM yezzey_gc()")
                if not gone & self.in_store():
                    break
                time.sleep(0.3)
            self.assertEqual(gone & self.in_store(), set(), "GC kept the objects after the standby caught up")

            # A dropped database's maps go on the standby too.
            oid = yz.database_with_offloaded_table(MAIN, "yz_standby_drop", rows=20_000)
            s.caught_up_with(MAIN)
            self.assertGreater(yz.offloaded_files_of_database(s, oid), 0)
            MAIN.q("DROP DATABASE yz_standby_drop")
            s.caught_up_with(MAIN)
            self.assertEqual(yz.offloaded_files_of_database(s, oid), 0)
        finally:
            s.remove()

    def test_standby_replay_killed_at_random_moments(self):
        """kill -9 of a standby while it replays the creation and offload
        of a table of 150 MB: it starts again on its first try under the
        default descriptor limit, and ends with the table offloaded on its
        disk too, and the same rows."""
        make_wide_table(MAIN, "rb_src", 1_000_000)
        MAIN.q("VACUUM (FREEZE) rb_src")
        expect = MAIN.checksum("rb_src", order="id")
        s = MAIN.standby("standby", yz.other_port(1))
        try:
            s.start()
            s.caught_up_with(MAIN)
            for trial in range(3):
                MAIN.q("CREATE TABLE rb AS SELECT * FROM rb_src; VACUUM (FREEZE) rb")
                p = yz.offload_in_background(MAIN, "rb")
                time.sleep(random.uniform(0, 1.5))
                s.crash()
                self.assertEqual(p.wait(), 0, p.stderr.read())
                r = s.start(check=False)
                self.assertEqual(r.returncode, 0, f"trial {trial}: the standby's first start failed{s.log_tail()}")
                s.caught_up_with(MAIN)
                s.q("CHECKPOINT")
                state, local = s.status("rb")
                self.assertEqual(state, "offloaded", f"trial {trial}")
                self.assertLess(local, 64 * 1024, f"trial {trial}: replay brought blocks back")
                self.assertEqual(s.checksum("rb", order="id"), expect, f"trial {trial}")
                MAIN.q("DROP TABLE rb")
            s.restart(wipe_cache=True)
            s.caught_up_with(MAIN)
        finally:
            s.remove()
            MAIN.q("DROP TABLE rb_src")

    def test_restored_backup_reads_objects_kept_by_retention(self):
        """A base backup taken while a table was offloaded, restored after
        the primary loaded it back and ran GC, still reads the table: the
        objects are shared, and yezzey.gc_retention kept them."""
        expect = yz.offloaded_table(MAIN, "bk", 20_000)
        b = MAIN.backup("backup", yz.other_port(4), "--compress=server-lz4")
        try:
            gone = objects_of(MAIN, "bk")
            MAIN.q("SELECT * FROM yezzey_load_relation('bk')")
            r = MAIN.psql("SET yezzey.gc_retention = '1h'; SELECT * FROM yezzey_gc()")
            self.assertIn("within yezzey.gc_retention", MAIN.q(
                "SET yezzey.gc_retention = '1h'; SELECT string_agg(DISTINCT reason, ';') FROM yezzey_gc_plan() WHERE verdict = 'hold'"))
            self.assertTrue(gone <= self.in_store(), r.stderr)
            b.start()
            self.assertEqual(b.status("bk")[0], "offloaded")
            self.assertEqual(b.checksum("bk"), expect)
            used, size = b.local_bytes("bk")
            self.assertLess(used, 64 * 1024, "the backup carries the offloaded file's local bytes only")
        finally:
            b.remove()

    # --- clusters of their own ---

    def test_restored_copy_and_origin_never_collect_each_others_objects(self):
        """The DBA's steps: A offloads `old`, a base backup of A is started
        as its own cluster B, A offloads `newer`; then GC in B, and in A,
        in both directions, with yezzey.gc_retention = 0 in both."""
        a = MAIN
        expect_old = yz.offloaded_table(a, "old", 40_000)
        b = a.backup("copy_b", yz.other_port(2))
        try:
            b.start()
            self.assertNotEqual(b.member(), a.member(), "a restored copy must be a member of its own")
            self.assertEqual(b.q("SELECT parent FROM yezzey_lineage WHERE is_self"), a.member())
            self.assertEqual(b.q("SELECT origin FROM yezzey_lineage WHERE is_self"), "backup")
            yz.published(a, b.member())

            expect_newer = yz.offloaded_table(a, "newer", 200_000)

            # B collects: none of A's objects is B's to delete.
            self.assertEqual(b.q("SELECT deleted_objects FROM yezzey_gc()"), "0")
            self.assertTrue(a.referenced_objects() <= self.in_store())
            a.restart(wipe_cache=True)
            self.assertEqual(a.checksum("newer"), expect_newer)
            self.assertEqual(a.checksum("old"), expect_old)

            # B offloads its own table; A collects: B's objects stay.
            expect_b = yz.offloaded_table(b, "b_own", 30_000)
            b_objects = objects_of(b, "b_own")
            self.assertTrue(all(f"/m{b.member()}/" in n for n in b_objects))
            a.q("SELECT * FROM yezzey_gc()")
            self.assertTrue(b_objects <= self.in_store(), "A deleted objects B wrote")
            b.restart(wipe_cache=True)
            self.assertEqual(b.checksum("b_own"), expect_b)
            self.assertEqual(b.checksum("old"), expect_old)

            # A loads `old` back and collects: B still reads `old` from A's
            # objects, which B's record holds.
            old_objects = objects_of(a, "old")
            a.q("SELECT * FROM yezzey_load_relation('old')")
            a.q("SELECT * FROM yezzey_gc()")
            self.assertTrue(old_objects <= self.in_store(), "A deleted objects B still references")
            reasons = a.q("SELECT string_agg(DISTINCT reason, ';') FROM yezzey_gc_plan() WHERE verdict = 'hold'")
            self.assertIn(f"held by lineage member {b.member()}", reasons)
            b.restart(wipe_cache=True)
            self.assertEqual(b.checksum("old"), expect_old)

            # B lets go of `old`; once it has said so, A collects them.
            b.q("DROP TABLE old; CHECKPOINT")
            b.q("SELECT * FROM yezzey_gc()")
            a.q("SELECT * FROM yezzey_gc()")
            self.assertEqual(old_objects & self.in_store(), set(), "A kept objects nobody needs")
            self.assertEqual(a.checksum("old"), expect_old)

            # B goes away for good; A forgets it and collects what B wrote.
            gone = b.member()
            b.remove()
            self.assertIn("forgot", a.q(f"SELECT yezzey_forget_member('{gone}')"))
            self.assertEqual(a.q(f"SELECT state FROM yezzey_lineage WHERE member = '{gone}'"), "forgotten")
            a.q("SELECT * FROM yezzey_gc()")
            self.assertEqual(b_objects & self.in_store(), set(), "a forgotten member's objects are anyone's garbage")
            a.restart(wipe_cache=True)
            self.assertEqual(a.checksum("newer"), expect_newer)
        finally:
            b.remove()

    def test_promoted_standby_is_a_member_of_its_own(self):
        a = MAIN
        expect_pre = yz.offloaded_table(a, "pre", 40_000)
        s = a.standby("promoted", yz.other_port(3))
        try:
            s.start()
            s.caught_up_with(a)
            a_member = a.member()
            s.q("SELECT pg_promote()")
            s.wait_for("SELECT NOT pg_is_in_recovery()")
            self.assertNotEqual(s.member(), a_member)
            yz.published(a, s.member())
            # It is no standby any more: its slot would hold A's garbage.
            a.q("SELECT pg_drop_replication_slot('yz_promoted')")

            expect_s = yz.offloaded_table(s, "s_own", 30_000)
            pre_objects = objects_of(a, "pre")
            a.q("SELECT * FROM yezzey_load_relation('pre')")
            a.q("SELECT * FROM yezzey_gc()")
            s.q("SELECT * FROM yezzey_gc()")
            self.assertTrue(pre_objects <= self.in_store(), "A deleted what the promoted standby references")
            self.assertTrue(objects_of(s, "s_own") <= self.in_store())
            s.restart(wipe_cache=True)
            a.restart(wipe_cache=True)
            self.assertEqual(s.checksum("pre"), expect_pre)
            self.assertEqual(s.checksum("s_own"), expect_s)
            self.assertEqual(a.checksum("pre"), expect_pre)
        finally:
            s.remove()

    def test_pitr_restore_on_a_new_timeline_while_the_origin_runs(self):
        a = MAIN
        make_table(a, "p1", rows=30_000)
        a.q("VACUUM (FREEZE) p1; SELECT * FROM yezzey_offload_relation('p1')")
        b = a.backup("pitr", yz.other_port(6))
        try:
            make_table(a, "p2", rows=30_000)
            a.q("VACUUM (FREEZE) p2; SELECT * FROM yezzey_offload_relation('p2')")
            expect = (a.checksum("p1"), a.checksum("p2"))
            a.q("SELECT pg_create_restore_point('yz_rp')")
            # Changes after the target: B must not see them.
            a.q("UPDATE p1 SET note = 'after the target' WHERE id % 10 = 0")
            seg = a.q("SELECT pg_walfile_name(pg_current_wal_lsn())")
            a.q("SELECT pg_switch_wal()")
            for _ in range(300):
                if os.path.exists(os.path.join(ARCHIVE, seg)):
                    break
                time.sleep(0.1)
            subprocess.run(["runuser", "-u", "postgres", "--", "touch", os.path.join(b.data, "recovery.signal")], check=True)
            b.conf(f"restore_command = 'cp {ARCHIVE}/%f %p'\narchive_mode = off\n"
                   "recovery_target_name = 'yz_rp'\nrecovery_target_action = 'promote'")
            b.start()
            b.wait_for("SELECT NOT pg_is_in_recovery()")
            self.assertEqual(b.q("SELECT timeline_id > 1 FROM pg_control_checkpoint()"), "t")
            yz.published(a, b.member())
            self.assertEqual((b.checksum("p1"), b.checksum("p2")), expect)

            # The origin goes on: loads back and drops what B still reads.
            both = objects_of(a, "p1") | objects_of(a, "p2")
            a.q("SELECT * FROM yezzey_load_relation('p2'); DROP TABLE p1; CHECKPOINT")
            a.q("SELECT * FROM yezzey_gc()")
            b.q("SELECT * FROM yezzey_gc()")
            self.assertTrue(both <= self.in_store(), "the origin deleted objects the PITR copy references")
            b.restart(wipe_cache=True)
            a.restart(wipe_cache=True)
            self.assertEqual((b.checksum("p1"), b.checksum("p2")), expect)
            self.assertEqual(a.checksum("p2"), expect[1])
        finally:
            b.remove()


if __name__ == "__main__":
    yz.run(__name__)
