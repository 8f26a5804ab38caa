"""Backups and clones of a mostly offloaded cluster carry only its local
bytes: pg_basebackup in every format, and Barman's cloud tools storing
into Garage; restored into a file system 1.5x the local data, they start
and return the same rows.
"""
import os
import shutil
import subprocess
import tarfile
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


if __name__ == "__main__":
    yz.run(__name__)
