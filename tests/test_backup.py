"""Backups and clones of a mostly offloaded cluster carry only its local
bytes: pg_basebackup in every format, and Barman's cloud tools storing
into Garage; restored into a file system 1.5x the local data, they start
and return the same rows.
"""
import os
import shutil
import subprocess
import tarfile
import time
import unittest

import yz
from yz import MAIN

MB = 1 << 20


def du(path, exclude=("pg_wal", "pgsql_tmp_cache")):
    """Bytes a directory's files take on disk, leaving out named directories."""
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in exclude]
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def small_fs(path, size):
    os.makedirs(path, exist_ok=True)
    subprocess.run(["umount", path], capture_output=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)
    st = os.stat(yz.RUN)
    os.chown(path, st.st_uid, st.st_gid)


def as_pg(*cmd, env=None):
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True, env=env)


class Backups(unittest.TestCase):
    """One cluster whose offloaded data is about five times its local data."""

    @classmethod
    def setUpClass(cls):
        MAIN.init().start()
        MAIN.q("CREATE EXTENSION yezzey")
        # Cold history, offloaded; a hot table that stays local.
        cls.cold = {}
        for i in range(4):
            t = f"cold_{i}"
            cls.cold[t] = yz.offloaded_table(MAIN, t, 300_000)
        yz.make_table(MAIN, "hot", rows=60_000)
        cls.hot = MAIN.checksum("hot")
        MAIN.q("CHECKPOINT")
        cls.local = du(MAIN.data)
        cls.offloaded = int(MAIN.q("""SELECT sum(remote_blocks) * 8192 FROM yezzey_segments()"""))
        print(f"\n  cluster: {cls.local / MB:.0f} MB local, {cls.offloaded / MB:.0f} MB offloaded")

    @classmethod
    def tearDownClass(cls):
        MAIN.stop(check=False)

    def same_rows(self, c):
        for t, expect in self.cold.items():
            self.assertEqual(c.checksum(t), expect, f"{t} in {c.name}")
        self.assertEqual(c.checksum("hot"), self.hot)
        for t in self.cold:
            self.assertEqual(c.status(t)[0], "offloaded")

    def test_offloaded_files_take_nothing_locally(self):
        self.assertGreater(self.offloaded, 4 * self.local, "the fixture must be mostly offloaded")
        for t in self.cold:
            used, size = MAIN.local_bytes(t)
            self.assertEqual((used, size), (0, 0), f"{t}'s local file after offload")
        MAIN.restart(wipe_cache=True)
        self.same_rows(MAIN)

    def test_tar_backups_are_the_size_of_the_local_data(self):
        out = os.path.join(yz.RUN, "tarbackup")
        for opts in ([], ["--compress=server-lz4"]):
            subprocess.run(["rm", "-rf", out], check=True)
            os.makedirs(out)
            shutil.chown(out, "postgres")
            r = as_pg(os.path.join(yz.BIN, "pg_basebackup"),
                      "-h", yz.ENV["PGHOST"], "-p", str(MAIN.port), "-U", "postgres",
                      "-D", out, "-Ft", "-X", "none", "-c", "fast", *opts)
            self.assertEqual(r.returncode, 0, r.stderr)
            sent = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.startswith("base.tar"))
            print(f"  pg_basebackup -Ft -X none {' '.join(opts)}: {sent / MB:.1f} MB for {self.local / MB:.1f} MB local")
            self.assertLess(sent, 1.05 * self.local + 2 * MB)
            if not opts:
                with tarfile.open(os.path.join(out, "base.tar")) as tar:
                    names = tar.getnames()
                self.assertFalse([n for n in names if "pgsql_tmp" in n and "pg_yezzey" in n],
                                 "the frame cache is not backed up")
                self.assertTrue(any(n.startswith("pg_yezzey/map/") for n in names), "map files are")

    def test_backup_taken_while_an_offload_runs(self):
        """A base backup that copies a table while it is being offloaded
        restores to the same rows, whichever side of the offload it saw."""
        yz.make_wide_table(MAIN, "moving", 1_000_000)
        MAIN.q("VACUUM (FREEZE) moving")
        expect = MAIN.checksum("moving")
        p = yz.offload_in_background(MAIN, "moving")
        copy = MAIN.backup("during_offload", yz.other_port(9))
        self.assertEqual(p.wait(), 0, p.stderr.read())
        try:
            copy.start()
            self.assertEqual(copy.checksum("moving"), expect)
            state = copy.status("moving")[0]
            self.assertIn(state, ("local", "offloaded"))
            copy.restart(wipe_cache=True)
            self.assertEqual(copy.checksum("moving"), expect)
            print(f"\n  the copy saw the table {state}")
        finally:
            copy.remove()
        MAIN.q("DROP TABLE moving")

    def test_plain_backup_restores_into_a_small_file_system(self):
        """A copy made with pg_basebackup -Fp -X stream into a file system
        1.5x the local data starts, verifies, and reads every row."""
        mnt = os.path.join(yz.RUN, "small_restore")
        size_mb = int(1.5 * self.local / MB) + 64  # WAL for the copy to start with
        small_fs(mnt, f"{size_mb}m")
        try:
            copy = MAIN.backup("small_restore/data", yz.other_port(7))
            # (pg.sh set the copy's port in postgresql.conf after the backup.)
            r = as_pg(os.path.join(yz.BIN, "pg_verifybackup"), "-n", "-i", "postgresql.conf", copy.data)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertLess(du(copy.data), 1.05 * self.local + 2 * MB)
            copy.start()
            try:
                self.same_rows(copy)
                copy.restart(wipe_cache=True)
                self.same_rows(copy)
                # It can write, copy-on-write, without touching its origin.
                copy.q("UPDATE cold_0 SET note = 'changed in the copy' WHERE id % 1000 = 0; CHECKPOINT")
                self.assertEqual(copy.status("cold_0")[0], "partially offloaded")
                copy.restart(wipe_cache=True)
                self.assertEqual(copy.q("SELECT count(*) FROM cold_0 WHERE note = 'changed in the copy'"), "300")
                MAIN.restart(wipe_cache=True)
                self.assertEqual(MAIN.checksum("cold_0"), self.cold["cold_0"])
            finally:
                copy.stop(check=False)
        finally:
            subprocess.run(["umount", mnt], capture_output=True)


BARMAN_REPO = f"s3://{os.environ['YEZZEY_BUCKET']}/barman"
SERVER = "yz"


def barman_env():
    return ["env", f"AWS_ACCESS_KEY_ID={os.environ['AWS_ACCESS_KEY_ID']}",
            f"AWS_SECRET_ACCESS_KEY={os.environ['AWS_SECRET_ACCESS_KEY']}",
            f"AWS_DEFAULT_REGION={os.environ['YEZZEY_S3_REGION']}"]


def barman_cmd(tool, *args):
    """A Barman cloud command line, as the server's OS user runs it."""
    return [*barman_env(), os.path.join(os.environ["YEZZEY_BARMAN_BIN"], tool),
            "--endpoint-url", os.environ["YEZZEY_S3_ENDPOINT"], *args]


def barman(tool, *args):
    r = as_pg(*barman_cmd(tool, *args))
    if r.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(args)} failed: {r.stdout}{r.stderr}")
    return r.stdout


def shell_words(cmd):
    return " ".join(cmd)


class Barman(unittest.TestCase):
    """Barman's cloud tools, storing into Garage: full backups, WAL
    archiving, restore (to a point in time) into a small file system, and
    retention by deleting backups, which GC follows."""

    @classmethod
    def setUpClass(cls):
        MAIN.init()
        archive = shell_words(barman_cmd("barman-cloud-wal-archive", BARMAN_REPO, SERVER, "%p"))
        MAIN.conf(f"archive_mode = on\narchive_command = '{archive}'\n"
                  f"yezzey.barman_repository = '{BARMAN_REPO}/{SERVER}'")
        MAIN.start()
        MAIN.q("CREATE EXTENSION yezzey")
        yz.sh(yz.GARAGE, "env")  # Garage is up
        cls.cold = yz.offloaded_table(MAIN, "b_cold", 400_000)
        yz.make_table(MAIN, "b_hot", rows=60_000)
        cls.hot = MAIN.checksum("b_hot")
        MAIN.q("CHECKPOINT")
        cls.local = du(MAIN.data)

    @classmethod
    def tearDownClass(cls):
        MAIN.stop(check=False)

    def backup(self):
        barman("barman-cloud-backup", "-h", yz.ENV["PGHOST"], "-p", str(MAIN.port), "-U", "postgres",
               BARMAN_REPO, SERVER)
        out = barman("barman-cloud-backup-list", "--format", "json", BARMAN_REPO, SERVER)
        import json
        return json.loads(out)["backups_list"][-1]["backup_id"]

    def stored_bytes(self, backup_id):
        env = dict(os.environ, YEZZEY_STORAGE_URL=BARMAN_REPO)
        r = subprocess.run([yz.TOOL, "ls", f"{SERVER}/base/{backup_id}/"], capture_output=True, text=True,
                           env=env, check=True)
        return sum(int(line.split("\t")[0]) for line in r.stdout.splitlines() if line.strip())

    def wait_archived(self):
        seg = MAIN.q("SELECT pg_walfile_name(pg_current_wal_lsn())")
        MAIN.q("SELECT pg_switch_wal()")
        MAIN.wait_for(f"SELECT last_archived_wal >= '{seg}' FROM pg_stat_archiver", seconds=120)

    def test_backup_pitr_restore_and_retention(self):
        bid = self.backup()
        stored = self.stored_bytes(bid)
        print(f"\n  barman-cloud-backup {bid}: {stored / MB:.1f} MB stored for {self.local / MB:.1f} MB local")
        self.assertLess(stored, 1.05 * self.local + 2 * MB)
        status = MAIN.q(f"SELECT status FROM yezzey_backups WHERE label LIKE 'Barman backup % {bid}'")
        self.assertIn("Barman's catalogue", status)

        # After the backup: a table offloaded, a restore point, then the
        # origin loads it back, drops the cold one and collects garbage.
        late = yz.offloaded_table(MAIN, "b_late", 100_000)
        MAIN.q("SELECT pg_create_restore_point('yz_barman_rp')")
        expect = (self.cold, late, MAIN.checksum("b_hot"))
        needed = MAIN.referenced_objects()
        MAIN.q("SELECT * FROM yezzey_load_relation('b_late'); DROP TABLE b_cold; CHECKPOINT")
        self.wait_archived()
        MAIN.q("SELECT * FROM yezzey_gc()")
        store = yz.store_yz_objects(MAIN.system_id())
        self.assertTrue(needed <= store, "GC deleted objects a Barman backup may need")
        self.assertIn("retired after the backup",
                      MAIN.q("SELECT string_agg(DISTINCT reason, ';') FROM yezzey_gc_plan() WHERE verdict = 'hold'"))

        # Restore to the restore point, into a file system 1.5x the local data.
        mnt = os.path.join(yz.RUN, "barman_restore")
        small_fs(mnt, f"{int(1.5 * self.local / MB) + 64}m")
        copy = yz.Cluster("barman_restore/data", yz.other_port(8))
        try:
            barman("barman-cloud-restore", BARMAN_REPO, SERVER, bid, copy.data)
            self.assertLess(du(copy.data), 1.05 * self.local + 2 * MB)
            restore = shell_words(barman_cmd("barman-cloud-wal-restore", BARMAN_REPO, SERVER, "%f", "%p"))
            copy.conf(f"port = {copy.port}\narchive_mode = off\nrestore_command = '{restore}'\n"
                      "recovery_target_name = 'yz_barman_rp'\nrecovery_target_action = 'promote'")
            as_pg("touch", os.path.join(copy.data, "recovery.signal"))
            copy.start()
            copy.wait_for("SELECT NOT pg_is_in_recovery()", seconds=120)
            got = (copy.checksum("b_cold"), copy.checksum("b_late"), copy.checksum("b_hot"))
            self.assertEqual(got, expect)
            copy.restart(wipe_cache=True)
            self.assertEqual((copy.checksum("b_cold"), copy.checksum("b_late")), expect[:2])
            gone = copy.member()
        finally:
            copy.stop(check=False)
            subprocess.run(["umount", mnt], capture_output=True)
        # The restored copy is gone for good; its backup is deleted by
        # Barman's retention: then, and only then, GC collects.
        MAIN.q(f"SELECT yezzey_forget_member('{gone}')")
        MAIN.q("SELECT * FROM yezzey_gc()")
        self.assertTrue(needed - MAIN.referenced_objects() <= yz.store_yz_objects(MAIN.system_id()),
                        "GC deleted objects a backup still in Barman's catalogue needs")
        barman("barman-cloud-backup-delete", "-b", bid, BARMAN_REPO, SERVER)
        self.assertIn("expired", MAIN.q(f"SELECT status FROM yezzey_backups WHERE label LIKE '%{bid}'"))
        MAIN.q("SELECT * FROM yezzey_gc()")
        self.assertEqual(yz.store_yz_objects(MAIN.system_id()), MAIN.referenced_objects(),
                         "once the backup is deleted, what only it needed is collected")
        self.assertEqual(MAIN.q("SELECT count(*) FROM yezzey_backups"), "0")

    def test_kill_during_a_backup_and_during_gc(self):
        """kill -9 while Barman copies the data directory, and while GC
        deletes: the registration of the killed backup expires (Barman's
        catalogue records it FAILED) and is collected, a new backup works,
        and GC finishes its work later."""
        yz.offloaded_table(MAIN, "b_kill", 200_000)
        p = subprocess.Popen(["runuser", "-u", "postgres", "--",
                              *barman_cmd("barman-cloud-backup", "-h", yz.ENV["PGHOST"], "-p", str(MAIN.port),
                                          "-U", "postgres", BARMAN_REPO, SERVER)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        MAIN.wait_for("SELECT count(*) > 0 FROM yezzey_backups WHERE status = 'running'", seconds=60)
        MAIN.crash()
        p.wait()
        MAIN.start()
        self.assertIn("expired", MAIN.q("SELECT string_agg(status, ';') FROM yezzey_backups"))
        # Many objects to delete; kill GC halfway.
        MAIN.q("DROP TABLE b_kill; CHECKPOINT")
        for i in range(30):
            yz.offloaded_table(MAIN, f"b_many_{i}", 2_000)
        MAIN.q(";".join(f"DROP TABLE b_many_{i}" for i in range(30)) + "; CHECKPOINT")
        gc = subprocess.Popen(["psql", "-XAtq", "-p", str(MAIN.port), "-c", "SELECT * FROM yezzey_gc()"],
                              env=yz.ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        MAIN.crash()
        gc.wait()
        MAIN.start()
        MAIN.q("SELECT * FROM yezzey_gc()")
        self.assertEqual(yz.store_yz_objects(MAIN.system_id()), MAIN.referenced_objects())
        self.assertNotIn("expired", MAIN.q("SELECT coalesce(string_agg(status, ';'), '') FROM yezzey_backups"))
        bid = self.backup()
        self.assertIn("Barman's catalogue", MAIN.q(f"SELECT status FROM yezzey_backups WHERE label LIKE '%{bid}'"))
        MAIN.restart(wipe_cache=True)
        self.assertEqual(MAIN.checksum("b_hot"), self.hot)


if __name__ == "__main__":
    yz.run(__name__)
