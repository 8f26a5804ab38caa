"""The store unreachable, frozen, refusing credentials, missing its bucket,
holding a corrupt object, or read with the wrong key; and a data directory
on a nearly full disk (the frame cache's reserve, load back's estimate).
"""
import os
import subprocess
import time
import unittest

import yz
from yz import MAIN, make_table


def set_conf(c, **kv):
    for k, v in kv.items():
        c.q(f"ALTER SYSTEM SET yezzey.{k} = '{v}'")
    c.q("SELECT pg_reload_conf()")
    time.sleep(0.3)


def reset_conf(c, *names):
    for n in names:
        c.q(f"ALTER SYSTEM RESET yezzey.{n}")
    c.q("SELECT pg_reload_conf()")
    time.sleep(0.3)


class Faults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        MAIN.init().start()
        MAIN.q("CREATE EXTENSION yezzey")
        make_table(MAIN, "f_off", rows=20_000)
        make_table(MAIN, "f_local", rows=20_000)
        cls.off = MAIN.checksum("f_off")
        cls.local = MAIN.checksum("f_local")
        MAIN.q("SELECT * FROM yezzey_offload_relation('f_off')")

    @classmethod
    def tearDownClass(cls):
        yz.sh(yz.GARAGE, "resume", check=False)
        yz.sh(yz.GARAGE, "start", check=False)
        MAIN.stop(check=False)

    def test_store_unreachable(self):
        MAIN.restart()
        yz.sh(yz.GARAGE, "stop")
        try:
            set_conf(MAIN, timeout=2)
            t0 = time.time()
            e = MAIN.error_of("SELECT count(*) FROM f_off")
            self.assertLess(time.time() - t0, 30, "a query on offloaded data must fail within the timeout")
            self.assertIn("08006", e)
            self.assertIn("HINT", e)
            self.assertEqual(MAIN.checksum("f_local"), self.local, "local relations must be unaffected")
            make_table(MAIN, "f_new", rows=1000)
            e = MAIN.error_of("SELECT yezzey_offload_relation('f_new')")
            self.assertIn("08006", e)
            self.assertEqual(MAIN.status("f_new")[0], "local")
        finally:
            yz.sh(yz.GARAGE, "start")
            reset_conf(MAIN, "timeout")
        self.assertEqual(MAIN.checksum("f_off"), self.off)

    def test_frozen_store_fails_within_three_timeouts(self):
        """A store that accepts connections and never answers (SIGSTOP): a
        full scan fails within 3x yezzey.timeout, readahead in flight
        included, as the README promises."""
        make_table(MAIN, "f_frozen", rows=150_000)
        MAIN.q("VACUUM (FREEZE) f_frozen; SELECT * FROM yezzey_offload_relation('f_frozen')")
        expect = MAIN.checksum("f_frozen")
        MAIN.restart(wipe_cache=True)
        set_conf(MAIN, timeout=2)
        # The first rows come in, so connections are open when it freezes.
        MAIN.q("SELECT count(*) FROM (SELECT * FROM f_frozen LIMIT 10) s")
        yz.sh(yz.GARAGE, "pause")
        try:
            t0 = time.time()
            e = MAIN.error_of("SET max_parallel_workers_per_gather = 0; SELECT count(*), sum(hashtext(note)) FROM f_frozen")
            took = time.time() - t0
            print(f"\n  failed after {took:.1f}s (timeout 2s)")
            self.assertIn("08006", e)
            self.assertLess(took, 3 * 2 + 2, "more than 3x yezzey.timeout (plus a second of slack each way)")
        finally:
            yz.sh(yz.GARAGE, "resume")
            reset_conf(MAIN, "timeout")
        self.assertEqual(MAIN.checksum("f_frozen"), expect)

    def test_wrong_credentials_and_missing_bucket(self):
        MAIN.restart()
        set_conf(MAIN, s3_secret_access_key="0" * 64)
        try:
            e = MAIN.error_of("SELECT count(*) FROM f_off")
            self.assertIn("28000", e)
        finally:
            reset_conf(MAIN, "s3_secret_access_key")
        set_conf(MAIN, storage_url="s3://no-such-bucket-yezzey/pg")
        try:
            make_table(MAIN, "f_nb", rows=1000)
            e = MAIN.error_of("SELECT yezzey_offload_relation('f_nb')")
            self.assertIn("does not exist", e)
        finally:
            reset_conf(MAIN, "storage_url")
        self.assertEqual(MAIN.checksum("f_off"), self.off)

    def test_wrong_key(self):
        MAIN.restart()
        keyfile = os.path.join(yz.RUN, "other.key")
        with open(keyfile, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        os.chmod(keyfile, 0o644)
        set_conf(MAIN, key_file=keyfile)
        try:
            e = MAIN.error_of("SELECT count(*) FROM f_off")
            self.assertIn("28000", e)
            self.assertIn("key id", e)
        finally:
            reset_conf(MAIN, "key_file")
        self.assertEqual(MAIN.checksum("f_off"), self.off)

    def test_corrupt_object(self):
        make_table(MAIN, "f_bad", rows=20_000)
        MAIN.q("SELECT * FROM yezzey_offload_relation('f_bad')")
        MAIN.restart()
        name = MAIN.q("SELECT object FROM yezzey_segments() WHERE relfilenode = pg_relation_filenode('f_bad')")
        env = dict(os.environ, YEZZEY_STORAGE_URL=f"s3://{os.environ['YEZZEY_BUCKET']}/pg")
        # Flip one byte in the stored object, as bit rot or tampering would.
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "obj")
            subprocess.run([yz.TOOL, "get-raw", name, path], env=env, check=True)
            with open(path, "rb") as fh:
                data = bytearray(fh.read())
            data[len(data) // 3] ^= 0xFF
            with open(path, "wb") as fh:
                fh.write(data)
            subprocess.run([yz.TOOL, "put-raw", path, name], env=env, check=True)
        MAIN.restart(wipe_cache=True)
        e = MAIN.error_of("SELECT count(*), max(note) FROM f_bad")
        self.assertIn("XX001", e)
        self.assertEqual(MAIN.checksum("f_local"), self.local)


class SmallDisk(unittest.TestCase):
    """A cluster whose data directory is on a 400 MB file system."""

    MB = 1 << 20

    @classmethod
    def setUpClass(cls):
        cls.mnt = os.path.join(yz.RUN, "smalldisk")
        os.makedirs(cls.mnt, exist_ok=True)
        subprocess.run(["umount", cls.mnt], capture_output=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", cls.mnt], check=True)
        os.chown(cls.mnt, *_owner())
        cls.c = yz.Cluster("smalldisk/data", yz.other_port(5))
        cls.c.init()
        cls.c.conf("max_wal_size = 64MB\nmin_wal_size = 32MB\nshared_buffers = 32MB")
        cls.c.start()
        cls.c.q("CREATE EXTENSION yezzey")
        cls.filler = os.path.join(cls.mnt, "filler")

    @classmethod
    def tearDownClass(cls):
        cls.c.stop(check=False)
        subprocess.run(["umount", cls.mnt], capture_output=True)

    def free(self):
        st = os.statvfs(self.mnt)
        return st.f_bavail * st.f_frsize

    def fill_to(self, free):
        """Leaves `free` bytes free (a file the DBA's data would be)."""
        have = self.free() + (os.path.getsize(self.filler) if os.path.exists(self.filler) else 0)
        with open(self.filler, "wb") as f:
            f.truncate(0)
            left = have - free
            chunk = b"\0" * (1 << 20)
            while left > 0:
                n = min(left, len(chunk))
                f.write(chunk[:n])
                left -= n
            f.flush()
            os.fsync(f.fileno())

    def unfill(self):
        if os.path.exists(self.filler):
            os.remove(self.filler)

    def test_cache_keeps_the_reserve_and_load_back_checks_space(self):
        c = self.c
        make_table(c, "sd", rows=500_000)
        c.q("VACUUM (FREEZE) sd; CHECKPOINT")
        expect = c.checksum("sd")
        size = int(c.q("SELECT pg_relation_size('sd')"))
        c.q("SELECT * FROM yezzey_offload_relation('sd'); CHECKPOINT")
        self.assertEqual(c.status("sd")[0], "offloaded")
        # The disk fills up, as on the machine whose full disk made the DBA
        # offload in the first place.
        self.fill_to(60 * self.MB)
        set_conf(c, min_free_space="40MB")
        c.restart(wipe_cache=True)
        self.assertEqual(c.checksum("sd"), expect, "scan on a nearly full disk")
        free = self.free()
        print(f"\n  {free / self.MB:.0f} MB free after a full scan of {size / self.MB:.0f} MB (reserve 40 MB)")
        self.assertGreaterEqual(free, 36 * self.MB, "the cache took the reserve")
        cached = int(c.q("SELECT value FROM yezzey_remote_stats() WHERE stat = 'cache_used_bytes'"))
        self.assertGreater(cached, 0, "the cache was used up to the reserve")
        # Ordinary writes and checkpoints go on.
        c.q("CREATE TABLE sd_new AS SELECT g, md5(g::text) FROM generate_series(1, 100000) g; CHECKPOINT")
        self.assertEqual(c.checksum("sd"), expect)

        # Load back needs the table and about as much WAL: it refuses,
        # having written nothing.
        before = self.free()
        e = c.error_of("SELECT * FROM yezzey_load_relation('sd')")
        self.assertIn("53100", e)
        self.assertIn("HINT", e)
        self.assertEqual(c.status("sd")[0], "offloaded")
        self.assertGreater(self.free(), before - 4 * self.MB, "a refused load back wrote data")
        # With room, it works.
        self.unfill()
        c.q("SELECT yezzey_cache_clear()")
        c.q("SELECT * FROM yezzey_load_relation('sd')")
        self.assertEqual(c.status("sd")[0], "local")
        c.restart(wipe_cache=True)
        self.assertEqual(c.checksum("sd"), expect)


def _owner():
    st = os.stat(yz.RUN)
    return st.st_uid, st.st_gid


if __name__ == "__main__":
    yz.run(__name__)
