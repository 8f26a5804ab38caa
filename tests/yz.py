"""Helpers for the integration tests: clusters of the patched server with
yezzey preloaded (run by scripts/pg.sh), the Garage store the test run
started (scripts/test.sh exports its settings), and the comparisons every
test makes: full-table checksums, never fixed answers.

Object names and map contents come from yezzey itself (SQL and
yezzey-tool), never from a re-implementation here.
"""
import json
import os
import random
import subprocess
import sys
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.environ["YEZZEY_RUN"]
PG = os.path.join(ROOT, "scripts/pg.sh")
GARAGE = os.path.join(ROOT, "scripts/garage.sh")
TOOL = os.path.join(ROOT, "target/release/yezzey-tool")


def sh(*args, check=True, env=None):
    return subprocess.run(["bash", *args], check=check, capture_output=True, text=True, env=env)


def _pg_env():
    out = sh(PG, "env").stdout
    # export PGHOST=... PGPORT=... PGUSER=... PATH=...:$PATH
    env = dict(os.environ)
    for part in out.replace("export ", "").split():
        k, v = part.split("=", 1)
        env[k] = v.replace(":$PATH", ":" + os.environ["PATH"])
    return env


ENV = _pg_env()
BASE_PORT = int(ENV["PGPORT"])
# The patched server's programs (pg.sh env puts them first in PATH).
BIN = ENV["PATH"].split(":")[0]
MAIN_DATA = os.path.join(RUN, "pgdata")


class Cluster:
    """One cluster: the test run's main one (`pgdata`), or a standby, a
    restored backup or a clone in its own directory on its own port."""

    def __init__(self, name="pgdata", port=BASE_PORT):
        self.name, self.port = name, port
        self.data = os.path.join(RUN, name)

    def _ctl(self, action, *args, check=True, nofile=None):
        env = dict(os.environ, YEZZEY_PGDATA=self.data, YEZZEY_PGPORT=str(self.port))
        if nofile:
            env["YEZZEY_NOFILE"] = str(nofile)
        r = sh(PG, action, *args, check=False, env=env)
        if check and r.returncode != 0:
            raise AssertionError(f"pg.sh {action} {self.name} failed: {r.stderr}{self.log_tail()}")
        return r

    def log_tail(self, n=30):
        # pg.sh's log: <basename>.log, or postgres.log for the main cluster
        # when started without YEZZEY_PGDATA (the newer of the two).
        logs = [os.path.join(RUN, f"{os.path.basename(self.data)}.log")]
        if self.data == MAIN_DATA:
            logs.append(os.path.join(RUN, "postgres.log"))
        logs = [l for l in logs if os.path.exists(l)]
        if not logs:
            return ""
        with open(max(logs, key=os.path.getmtime)) as f:
            return "\n--- server log ---\n" + "".join(f.readlines()[-n:])

    # --- life cycle ---
    def init(self):
        self._ctl("init")
        return self

    def start(self, check=True, nofile=None):
        return self._ctl("start", check=check, nofile=nofile)

    def stop(self, check=True):
        return self._ctl("stop", check=check)

    def crash(self):
        """kill -9 of the postmaster, as a power cut would."""
        self._ctl("crash", check=False)

    def wipe_cache(self):
        subprocess.run(["rm", "-rf", os.path.join(self.data, "pg_yezzey/pgsql_tmp_cache")], check=True)

    def restart(self, wipe_cache=True, nofile=None):
        self.stop()
        if wipe_cache:
            self.wipe_cache()
        self.start(nofile=nofile)

    def postmaster_pid(self):
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())

    # --- copies ---
    def standby(self, name, port, *opts):
        """A streaming standby (pg_basebackup -R, with a slot yz_<name>)."""
        self._ctl("standby", os.path.join(RUN, name), str(port), *opts)
        return Cluster(name, port)

    def backup(self, name, port, *opts):
        """A base backup to start as a cluster of its own (a restored copy)."""
        self._ctl("backup", os.path.join(RUN, name), str(port), *opts)
        return Cluster(name, port)

    def remove(self):
        """Stops and deletes the cluster. A standby's lineage record
        (published during recovery, holding the primary's garbage) is
        forgotten in the main cluster, as a DBA decommissioning it would."""
        self.stop(check=False)
        member = None
        try:
            with open(os.path.join(self.data, "pg_yezzey", "member.json")) as f:
                member = json.load(f)["member"]
        except (OSError, ValueError, KeyError):
            pass
        if member and self.data != MAIN_DATA:
            MAIN.psql(f"SELECT yezzey_forget_member(member) FROM yezzey_lineage "
                      f"WHERE member = '{member}' AND in_recovery AND NOT is_self", check=False)
        subprocess.run(["rm", "-rf", self.data], check=True)

    def conf(self, text):
        """Appends to postgresql.conf (as its owner)."""
        subprocess.run(["runuser", "-u", "postgres", "--", "tee", "-a",
                        os.path.join(self.data, "postgresql.conf")],
                       input="\n" + text + "\n", text=True, capture_output=True, check=True)

    # --- SQL ---
    def psql(self, sql, db="postgres", check=True):
        # Through stdin, so each statement autocommits as in a DBA's script.
        env = dict(ENV, PGPORT=str(self.port))
        r = subprocess.run(["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"],
                           input="\\set VERBOSITY verbose\n" + sql + "\n",
                           capture_output=True, text=True, env=env)
        if check and r.returncode != 0:
            raise AssertionError(f"psql on {self.name} failed: {sql}\n{r.stderr}")
        return r

    def q(self, sql, db="postgres"):
        return self.psql(sql, db).stdout.strip()

    def error_of(self, sql, db="postgres"):
        r = self.psql(sql, db, check=False)
        if r.returncode == 0:
            raise AssertionError(f"expected an error from: {sql}\ngot: {r.stdout}")
        return r.stderr

    def checksum(self, table, order="id", db="postgres"):
        return self.q(f"SELECT md5(string_agg(t::text, ',' ORDER BY {order})) || ':' || count(*) FROM {table} t", db)

    def wait_for(self, sql, want="t", seconds=60, db="postgres"):
        for _ in range(int(seconds * 10)):
            if self.q(sql, db) == want:
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: `{sql}` did not become {want!r} within {seconds} s")

    def caught_up_with(self, primary):
        lsn = primary.q("SELECT pg_current_wal_flush_lsn()")
        self.wait_for(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'")

    # --- yezzey's view of things ---
    def referenced_objects(self):
        """Objects this cluster's maps name (all databases): bases and layers."""
        return set(self.q("SELECT object FROM yezzey_segments() "
                          "UNION ALL SELECT unnest(layer_objects) FROM yezzey_segments()").split())

    def member(self):
        return self.q("SELECT member FROM yezzey_lineage WHERE is_self")

    def system_id(self):
        return self.q("SELECT system_identifier FROM pg_control_system()")

    def status(self, table, db="postgres"):
        state, local = self.q(f"SELECT state, local_bytes FROM yezzey_relation_status('{table}')", db).split("|")
        return state, int(local)

    def local_bytes(self, table, db="postgres"):
        """Bytes the table's main file takes on disk (holes excluded) and its size."""
        path = self.q(f"SELECT pg_relation_filepath('{table}')", db)
        st = os.stat(os.path.join(self.data, path))
        return st.st_blocks * 512, st.st_size

    def open_fds(self, backend_type):
        """Descriptors held by each of this cluster's processes of a type."""
        out = {}
        for pid in self.q(f"SELECT pid FROM pg_stat_activity WHERE backend_type = '{backend_type}'").split():
            try:
                out[int(pid)] = len(os.listdir(f"/proc/{pid}/fd"))
            except FileNotFoundError:
                pass
        return out


MAIN = Cluster()


def store_objects(system_id, prefix=""):
    """Object names in the store under a system id (yezzey-tool ls)."""
    env = dict(os.environ, YEZZEY_STORAGE_URL=f"s3://{os.environ['YEZZEY_BUCKET']}/pg")
    r = subprocess.run([TOOL, "ls", f"{system_id}/{prefix}"], capture_output=True, text=True, env=env, check=True)
    return {line.split("\t")[1] for line in r.stdout.splitlines() if line.strip()}


def store_yz_objects(system_id):
    return {n for n in store_objects(system_id) if n.endswith(".yz")}


def make_table(c, name, rows=200_000, extra="", db="postgres"):
    """A table of realistic rows (dates, numerics, text of varied length,
    a few TOASTed values) with a primary key."""
    c.q(f"""DROP TABLE IF EXISTS {name} CASCADE;
CREATE TABLE {name} (id int PRIMARY KEY, day date, amount numeric, note text) {extra};
INSERT INTO {name}
SELECT g, date '2023-01-01' + (g % 365), (g::bigint * 7919) % 100000 / 100.0,
       repeat(md5(g::text), 1 + g % 5) || CASE WHEN g % 1000 = 0 THEN repeat('x', 3000) ELSE '' END
  FROM generate_series(1, {rows}) g;
ANALYZE {name};""", db)


def offloaded_table(c, name, rows, db="postgres"):
    """make_table, frozen and offloaded; returns its checksum."""
    make_table(c, name, rows=rows, db=db)
    c.q(f"VACUUM (FREEZE) {name}; SELECT * FROM yezzey_offload_relation('{name}')", db)
    return c.checksum(name, db=db)


def database_with_offloaded_table(c, name, rows=30_000):
    """A fresh database with yezzey and one offloaded table `cold`; its oid."""
    c.psql(f"DROP DATABASE IF EXISTS {name}")
    c.q(f"CREATE DATABASE {name}")
    c.q("CREATE EXTENSION yezzey", name)
    offloaded_table(c, "cold", rows, db=name)
    return c.q(f"SELECT oid FROM pg_database WHERE datname = '{name}'")


def offloaded_files_of_database(c, oid):
    """How many offloaded segments of a database a cluster's maps name."""
    return int(c.q(f"SELECT count(*) FROM yezzey_segments() WHERE database = {oid}"))


def offload_in_background(c, table, options=""):
    """Starts offloading a table in another session (with `options`, as
    PGOPTIONS gives them); returns the process."""
    return subprocess.Popen(["psql", "-XAtq", "-p", str(c.port), "-c",
                             f"SELECT * FROM yezzey_offload_relation('{table}')"],
                            env=dict(ENV, PGOPTIONS=options), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def make_wide_table(c, name, rows, db="postgres"):
    """The shape of the table the issue reports used (bigint, timestamptz,
    int, numeric, two text columns), no primary key: about 100 bytes a row."""
    c.q(f"""DROP TABLE IF EXISTS {name} CASCADE;
CREATE TABLE {name} (id bigint, ts timestamptz, n int, amount numeric, a text, b text);
INSERT INTO {name}
SELECT g, timestamptz '2024-01-01' - g * interval '1 s', g % 1000, g * 1.01,
       md5(g::text), repeat(md5((g * 7)::text), 1 + g % 3)
  FROM generate_series(1, {rows}) g;""", db)


def published(origin, member, in_recovery=False):
    """Waits until `member` published its lineage record (seen from `origin`)."""
    extra = " AND in_recovery" if in_recovery else ""
    origin.wait_for(f"SELECT count(*) FROM yezzey_lineage WHERE member = '{member}' AND state = 'live'{extra}", "1")


def other_port(i):
    """Ports for second clusters: the main one's +1, +2, ..."""
    return BASE_PORT + i


def run(module_name):
    """Runs a test module's tests and exits with their outcome."""
    seed = int(os.environ.get("YEZZEY_TEST_SEED", time.time()))
    random.seed(seed)
    print(f"random seed {seed} (YEZZEY_TEST_SEED to repeat)", flush=True)
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[module_name])
    only = os.environ.get("YEZZEY_TEST_ONLY")
    if only:
        # Runs only the tests whose name contains it (for reruns by hand).
        def pick(s):
            for t in s:
                if isinstance(t, unittest.TestSuite):
                    yield from pick(t)
                elif only in t.id():
                    yield t
        suite = unittest.TestSuite(pick(suite))
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors)
    print(f"{module_name}: {result.testsRun - failed} passed, {failed} failed, {len(result.skipped)} skipped")
    sys.exit(1 if failed else 0)
