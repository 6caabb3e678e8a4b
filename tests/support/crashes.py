"""The crash-point harness (issue 15, item 2): SIGKILL a real `flowdeck daemon`, restart it,
and compare what it stored with a daemon that was never interrupted.

Two daemons run side by side on SQLite files, each with the bundled demo's flows on a 1 s
schedule and its own in-process simulator (seed 7: an observation is a pure function of
seed, source, key and minute, so both see the same data for the same minute). The
*clean* one runs throughout. The *crashed* one is killed again and again:

- at a named crash point (``FLOWDECK_CRASH_AT=<point>:<n>``, ``storage/crashpoints.py``):
  the process SIGKILLs itself the n-th time it passes the point;
- at a random moment after it is ready (a seeded RNG picks the delay), by the harness;
- ``mid_spool_write`` needs the store away: the harness holds the SQLite write lock
  (``BEGIN EXCLUSIVE``) so runs spool their payloads, and the first spool write dies.

After each kill an unarmed daemon starts on the same file; the harness measures the time
from its start to ``/readyz`` 200 and waits until every flow has had a successful run
since, then stops it (SIGTERM) before the next kill. At the end both daemons run once
more past a common moment and are stopped, and :func:`compare` checks, over the minutes
both have fully seen:

- nothing is left behind: no committed raw payload unprocessed, no spool file left;
- the validated records are the same (flow, key, minute, data, sources): no loss, no
  duplicate (quality and anomaly scores are left out: they depend on when a record was
  processed, freshness and the detectors' warm-up, not on what was stored);
- the series points are the same, and every roll-up (1 m and 1 h) agrees with the
  points it sums (n, sum, min, max): a point written twice would count twice.

On PostgreSQL (``run_campaign(..., pg_admin=URL)``) each daemon gets a database of its own,
made for the run and dropped after it, and a spool folder of its own; ``mid_spool_write``
keeps the store away by refusing connections to the crashed daemon's database
(``ALLOW_CONNECTIONS false`` and its sessions ended) instead of SQLite's write lock.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

FLOWDECK = [sys.executable, "-m", "flowdeck.console.cli"]
MINUTE = 60_000
NAMED = (
    "before_raw_commit",
    "after_raw_commit",
    "mid_records_upsert",
    "after_records_commit",
    "mid_series_write",
    "mid_spool_write",
)


@dataclass(frozen=True)
class Kill:
    """One kill: a crash point and its hit number, or ``random`` with a delay in seconds."""

    point: str
    n: int = 1
    delay_s: float = 0.0

    def __str__(self) -> str:
        return f"random@{self.delay_s:.2f}s" if self.point == "random" else f"{self.point}:{self.n}"


def plan(n_kills: int, seed: int, *, migration: bool = True) -> list[Kill]:
    """``n_kills`` kills: mid-migration first (the first start only), then the named points
    in turn (the frequent ones at varying hit numbers), every third one a random-time kill."""
    rng = random.Random(seed)
    kills = [Kill("mid_migration")] if migration else []
    i = 0
    while len(kills) < n_kills:
        if len(kills) % 3 == 2:
            kills.append(Kill("random", delay_s=round(rng.uniform(0.1, 3.0), 2)))
        else:
            point = NAMED[i % len(NAMED)]
            # Raw commits and spool writes come every run (1 s); records and series only
            # when a new minute of data arrives: their first hit is up to a minute away.
            often = point in ("before_raw_commit", "after_raw_commit", "mid_spool_write")
            kills.append(Kill(point, rng.randint(1, 4) if often else 1))
            i += 1
    return kills


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 now: each socket is held until all are chosen, so
    daemons started side by side never get the same port (one of three cluster nodes once
    failed with 'address already in use')."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_config(folder: Path, spool_dir: Path | None = None, name: str = "crash-flows") -> Path:
    """The bundled demo, every flow on a 1 s schedule, a short SQLite busy timeout (so a
    held lock sends payloads to the spool quickly), the reference table by absolute path;
    ``spool_dir`` for a PostgreSQL store (a SQLite one spools next to its file)."""
    data = files("flowdeck.sample_data")
    text = (data / "flows" / "demo.yaml").read_text()
    text = text.replace("schedule: {every: 10s}", "schedule: {every: 1s}")
    text = text.replace("../reference/stations.csv", str(data / "reference" / "stations.csv"))
    text += "\nstore:\n  busy_timeout: 0.5s\n  retry: 1s\n"
    if spool_dir is not None:
        text += f"  spool_dir: {spool_dir}\n"
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def http_json(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}


def db_url(db: Path | str) -> str:
    """A SQLite file's URL; a PostgreSQL URL as it is."""
    return db if isinstance(db, str) else f"sqlite:///{db}"


class Proc:
    """One `flowdeck daemon` process on a SQLite file (a Path) or a PostgreSQL URL."""

    def __init__(self, config: Path, db: Path | str, crash_at: str | None = None,
                 log: Path | None = None, preexec_fn=None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("FLOWDECK_CRASH_AT",
                                                               "FLOWDECK_TOKEN")}
        if crash_at:
            env["FLOWDECK_CRASH_AT"] = crash_at
        env["PYTHONUNBUFFERED"] = "1"
        self.log = log
        self._err = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            FLOWDECK + ["daemon", "--config", str(config), "--db", db_url(db),
                        "--bind", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=self._err, env=env, preexec_fn=preexec_fn)

    def ready(self, timeout: float = 60.0) -> float | None:
        """Seconds from start to /readyz 200, or None if the process died first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return None
            try:
                if http_json(self.url + "/readyz", 2.0)[0] == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"daemon on {self.url} not ready after {timeout}s")

    def flows(self) -> dict:
        return http_json(self.url + "/api/flows")[1].get("flows", {})

    def wait_success_after(self, t_ms: int, timeout: float = 60.0) -> None:
        """Until every flow has a successful run that finished after ``t_ms``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}")
            try:
                flows = self.flows()
            except OSError:
                flows = {}
            if flows and all((f.get("last_success_ms") or 0) > t_ms for f in flows.values()):
                return
            time.sleep(0.1)
        raise AssertionError(f"no successful run of every flow after {t_ms}")

    def wait_killed(self, timeout: float = 240.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("the crash point was never reached") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("daemon did not stop on SIGTERM") from None
        finally:
            if self._err is not subprocess.DEVNULL:
                self._err.close()


class WriteLock:
    """Hold SQLite's write lock on a file (another process's long transaction)."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, timeout=30, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


class RefuseConnections:
    """Keep a PostgreSQL database away from its clients: no new connections, and the
    sessions it has ended (as a server restart or a failover would)."""

    def __init__(self, admin: str, name: str) -> None:
        import psycopg

        self.conn = psycopg.connect(_libpq(admin), autocommit=True)
        self.name = name
        self.conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        self.conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))

    def release(self) -> None:
        self.conn.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')
        self.conn.close()


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class PgDatabases:
    """Databases made for one campaign on a PostgreSQL server, dropped at the end."""

    def __init__(self, admin: str) -> None:
        import uuid

        import psycopg

        self.admin = admin
        self.prefix = f"flowdeck_crash_{uuid.uuid4().hex[:10]}"
        self.names: list[str] = []
        self._psycopg = psycopg

    def make(self, suffix: str) -> str:
        name = f"{self.prefix}_{suffix}"
        with self._psycopg.connect(_libpq(self.admin), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return self.admin.rsplit("/", 1)[0] + f"/{name}"

    def drop(self) -> None:
        with self._psycopg.connect(_libpq(self.admin), autocommit=True) as c:
            for name in self.names:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Outcome:
    kills: list[str] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    ready_s: list[float] = field(default_factory=list)
    compared: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def ready_p(self, q: float) -> float:
        xs = sorted(self.ready_s)
        if not xs:
            return float("nan")
        if len(xs) == 1:
            return xs[0]
        return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1]

    def summary(self) -> str:
        c = self.compared
        return (f"{len(self.kills)} kills ({sum(1 for k in self.kills if k.startswith('random'))}"
                f" random), exit codes {sorted(set(self.exit_codes))}; compared "
                f"{c.get('records', 0)} records, {c.get('series', 0)} series points, "
                f"{c.get('rollups', 0)} roll-ups over {c.get('minutes', 0)} minutes: "
                f"lost {c.get('lost', '?')}, duplicated {c.get('duplicated', '?')}, "
                f"different {c.get('different', '?')}; ready after restart p50 "
                f"{self.ready_p(50):.2f}s p95 {self.ready_p(95):.2f}s (n={len(self.ready_s)})")


def run_campaign(folder: Path, kills: list[Kill], *, settle_s: float = 0.0,
                 progress=None, pg_admin: str | None = None) -> Outcome:
    """Run the clean and the crashed daemon through ``kills``; compare; an Outcome.
    ``pg_admin``: on PostgreSQL, in two databases made (and dropped) on that server."""
    if pg_admin is None:
        return _campaign(folder, kills, settle_s, progress, None)
    dbs = PgDatabases(pg_admin)
    try:
        return _campaign(folder, kills, settle_s, progress, dbs)
    finally:
        dbs.drop()


def _campaign(folder: Path, kills: list[Kill], settle_s: float, progress,
              pg: PgDatabases | None) -> Outcome:
    clean_db: Path | str
    crash_db: Path | str
    if pg is None:
        config = clean_config = write_config(folder)
        clean_db, crash_db = folder / "clean.db", folder / "crash.db"
        spool = folder / "crash.db.spool"
    else:
        spool = folder / "crash.spool"
        config = write_config(folder, spool, "crash-flows")
        clean_config = write_config(folder, folder / "clean.spool", "clean-flows")
        clean_db, crash_db = pg.make("clean"), pg.make("crash")
    out = Outcome()
    say = progress or (lambda _msg: None)
    clean = Proc(clean_config, clean_db, log=folder / "clean.log")
    assert clean.ready() is not None, "the clean daemon did not start"
    first_ms = int(time.time() * 1000)
    try:
        for i, kill in enumerate(kills):
            log = folder / f"crash-{i:03d}.log"
            out.kills.append(str(kill))
            if kill.point == "random":
                p = Proc(config, crash_db, log=log)
                if p.ready() is None:
                    raise AssertionError(f"daemon died before a random kill: {log.read_text()}")
                time.sleep(kill.delay_s)
                p.kill()
                code = p.proc.returncode
            elif kill.point == "mid_spool_write":
                p = Proc(config, crash_db, kill.point + f":{kill.n}", log=log)
                if p.ready() is None:
                    raise AssertionError(f"daemon died before the lock: {log.read_text()}")
                lock = (WriteLock(crash_db) if pg is None
                        else RefuseConnections(pg.admin, str(crash_db).rsplit("/", 1)[1]))
                try:
                    code = p.wait_killed()
                finally:
                    lock.release()
            else:
                p = Proc(config, crash_db, f"{kill.point}:{kill.n}", log=log)
                code = p.wait_killed()
            p.stop()
            out.exit_codes.append(code)
            if code != -signal.SIGKILL:
                out.problems.append(f"{kill}: exited with {code}, not SIGKILL")
            # Restart, unarmed: time to ready, then a successful run of every flow.
            r = Proc(config, crash_db, log=folder / f"restart-{i:03d}.log")
            t = r.ready()
            if t is None:
                out.problems.append(f"after {kill}: the restarted daemon exited "
                                    f"{r.proc.returncode}: "
                                    + (folder / f"restart-{i:03d}.log").read_text()[-500:])
                r.stop()
                break
            out.ready_s.append(t)
            r.wait_success_after(int(time.time() * 1000))
            r.stop()
            say(f"{i + 1}/{len(kills)} {kill}: killed ({code}); ready again in {t:.2f}s")
        if settle_s:
            time.sleep(settle_s)
        # The end: the crashed daemon once more, both past a common moment, then stopped.
        final = Proc(config, crash_db, log=folder / "final.log")
        if final.ready() is None:
            out.problems.append("the final daemon did not start: "
                                + (folder / "final.log").read_text()[-500:])
            return out
        mark = int(time.time() * 1000) + 500
        final.wait_success_after(mark)
        clean.wait_success_after(mark)
        last_ms = min(int(time.time() * 1000), mark)
        for d in (final, clean):
            code = d.stop()
            if code != 0:
                out.problems.append(f"a daemon stopped with {code}")
    finally:
        clean.stop()
    # Minutes both have fully seen: from a little after the later first poll, to three
    # minutes before the common mark (the slowest source serves two minutes behind).
    lo = (first_ms // MINUTE) * MINUTE - 3 * MINUTE
    hi = (last_ms // MINUTE) * MINUTE - 3 * MINUTE
    out.compared, problems = compare(clean_db, crash_db, folder, lo, hi, spool=spool)
    out.problems.extend(problems)
    return out


def _rows(db: Path | str, sql: str, args=()) -> list[tuple]:
    if isinstance(db, str):  # PostgreSQL
        import psycopg

        with psycopg.connect(_libpq(db)) as pconn:
            return [tuple(r) for r in pconn.execute(sql.replace("?", "%s"), args).fetchall()]
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _json(v):
    return json.loads(v) if isinstance(v, str | bytes) else v


def _name(db: Path | str) -> str:
    return db.name if isinstance(db, Path) else db.rsplit("/", 1)[1]


def _records(db: Path, lo: int, hi: int) -> dict:
    out = {}
    for flow, key, ts, data, sources in _rows(
            db, "SELECT flow, key, ts_ms, data, sources FROM records "
                "WHERE ts_ms >= ? AND ts_ms < ?", (lo, hi)):
        d = dict(_json(data))
        d.pop("anomaly_reason", None)
        out[(flow, key, ts)] = (json.dumps(d, sort_keys=True), tuple(sorted(_json(sources))))
    return out


# Series and roll-ups are stored by series id (series_keys names each): compared by name,
# since the two databases number their series independently. A series' points are its
# records' numeric values of the metric (migration 0006).
NAMES = "k.flow, k.key, k.metric"
BY_NAME = " t JOIN series_keys k ON k.id = t.sid"
_PATH = "'$.\"' || k.metric || '\"'"
_SQLITE_VALUE = (f"json_extract(r.data, {_PATH})", f"json_type(r.data, {_PATH}) IN ('integer', 'real')")
_PG_VALUE = ("(r.data ->> k.metric)::float8", "jsonb_typeof(r.data -> k.metric) = 'number'")


def _points(db: Path | str) -> str:
    """The points as a table (sid, ts_ms, value), in the database's own JSON functions."""
    value, numeric = _PG_VALUE if isinstance(db, str) else _SQLITE_VALUE
    return (f"(SELECT k.id AS sid, r.ts_ms AS ts_ms, {value} AS value "
            "FROM records r JOIN series_keys k ON k.flow = r.flow AND k.key = r.key "
            f"WHERE {numeric})")


def _rollup_problems(db: Path | str, name: str) -> list[str]:
    """Roll-ups that disagree with the points they sum (a point counted twice, or lost)."""
    table, width = {"1m": ("series_1m", MINUTE), "1h": ("series_1h", 60 * MINUTE)}[name]
    points: dict[tuple, list[float]] = {}
    for flow, key, metric, ts, value in _rows(db, f"SELECT {NAMES}, t.ts_ms, t.value "
                                                  f"FROM {_points(db)}{BY_NAME}"):
        points.setdefault((flow, key, metric, ts // width * width), []).append(value)
    bad = []
    rollups = _rows(db, f"SELECT {NAMES}, t.bucket_ms, t.n, t.sum, t.min, t.max "
                        f"FROM {table}{BY_NAME}")
    for flow, key, metric, bucket, n, total, lo, hi in rollups:
        vals = points.pop((flow, key, metric, bucket), [])
        if (n != len(vals) or abs(total - sum(vals)) > 1e-6 * max(1.0, abs(total))
                or (vals and (abs(lo - min(vals)) > 1e-9 or abs(hi - max(vals)) > 1e-9))):
            bad.append(f"{_name(db)} {table} {flow}/{key}/{metric}@{bucket}: n={n} sum={total}"
                       f" but {len(vals)} points summing {sum(vals)}")
    bad.extend(f"{_name(db)} {table}: no roll-up for {k}" for k in points)
    return bad


def compare(clean_db: Path | str, crash_db: Path | str, folder: Path, lo: int, hi: int,
            spool: Path | None = None) -> tuple[dict, list]:
    problems = []
    pending = _rows(crash_db, "SELECT count(*) FROM raw_payloads p LEFT JOIN raw_status s "
                              "ON s.raw_id = p.id WHERE s.raw_id IS NULL")[0][0]
    if pending:
        problems.append(f"{pending} committed raw payload(s) never processed")
    spool = spool or folder / "crash.db.spool"
    spooled = [p for p in spool.glob("*/*") if p.suffix in (".spool", ".bad")]
    if spooled:
        problems.append(f"{len(spooled)} payload(s) left in the spool: {spooled[:3]}")
    a, b = _records(clean_db, lo, hi), _records(crash_db, lo, hi)
    lost = sorted(set(a) - set(b))
    extra = sorted(set(b) - set(a))
    different = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    for what, keys in (("lost", lost), ("not in the clean run", extra),
                       ("different", different)):
        if keys:
            problems.append(f"records {what}: {len(keys)}, e.g. "
                            + "; ".join(f"{k}: clean {a.get(k)} crashed {b.get(k)}"
                                        for k in keys[:3]))
    def q(db: Path | str) -> str:
        return (f"SELECT {NAMES}, t.ts_ms, t.value FROM {_points(db)}{BY_NAME} "
                "WHERE t.ts_ms >= ? AND t.ts_ms < ?")

    sa = set(_rows(clean_db, q(clean_db), (lo, hi)))
    sb = set(_rows(crash_db, q(crash_db), (lo, hi)))
    if sa != sb:
        problems.append(f"series differ: {len(sa - sb)} only in the clean run, "
                        f"{len(sb - sa)} only after crashes, e.g. "
                        f"{sorted(sa - sb)[:2]} / {sorted(sb - sa)[:2]}")
    r = (f"SELECT {NAMES}, t.bucket_ms, t.n, t.sum, t.min, t.max FROM series_1m{BY_NAME} "
         "WHERE t.bucket_ms >= ? AND t.bucket_ms < ?")
    ra, rb = set(_rows(clean_db, r, (lo, hi))), set(_rows(crash_db, r, (lo, hi)))
    if ra != rb:
        problems.append(f"1m roll-ups differ: {sorted(ra - rb)[:2]} / {sorted(rb - ra)[:2]}")
    for db in (clean_db, crash_db):
        for name in ("1m", "1h"):
            problems.extend(_rollup_problems(db, name)[:5])
    dup = _rows(crash_db, "SELECT count(*) - count(DISTINCT flow || '|' || key || '|' "
                          "|| CAST(ts_ms AS TEXT)) FROM records")[0][0]
    compared = {"records": len(a), "series": len(sa), "rollups": len(ra),
                "minutes": max(0, (hi - lo) // MINUTE), "lost": len(lost) + len(sa - sb),
                "duplicated": dup + len(extra), "different": len(different), "pending": pending}
    return compared, problems

