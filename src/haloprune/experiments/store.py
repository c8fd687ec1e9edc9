"""SQLite results store for sweeps: a row per job in ``runs``, a row per evaluated sparsity in ``results``.

Safe with several processes writing at once: the database runs in WAL mode with a busy timeout, and
every write is one ``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so two writers
never deadlock on a lock upgrade). A job is *claimed* before it runs; a claim held by a process that
has since died (killed, crashed, out of memory) is taken over, so no job is lost, and
:meth:`ResultStore.finish` replaces a job's results and marks it done in one transaction, so none is
counted twice.

Only the process that runs the sweep (the *driver*) writes the store; wherever the jobs run (worker
processes, SLURM through submitit, Ray), they hand their records back to it. A claim names the driver's
pid and host and, once the job is submitted, the executor and its handle for the job (a SLURM job id, a
Ray actor name), so a driver started again after the first one died re-attaches to the job instead of
submitting it twice.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from haloprune.core.errors import HaloPruneError
from haloprune.experiments.jobs import Job

DEFAULT_PATH = Path("runs/results.sqlite")
STATUSES = ("pending", "running", "done", "failed")
SCHEMA_VERSION = 3  # 2: runs.reused_from; 3: runs.executor, runs.handle

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    sweep TEXT NOT NULL,
    method TEXT NOT NULL,
    seed INTEGER NOT NULL,
    sparsity REAL,
    config TEXT NOT NULL,
    hyperparameters TEXT NOT NULL,
    git_commit TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    pid INTEGER,
    host TEXT,
    started REAL,
    finished REAL,
    wall_seconds REAL,
    epochs_used INTEGER,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    reused_from TEXT,
    executor TEXT,
    handle TEXT
);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep);
CREATE TABLE IF NOT EXISTS results (
    run_key TEXT NOT NULL REFERENCES runs (key),
    method TEXT NOT NULL,
    seed INTEGER NOT NULL,
    sparsity REAL NOT NULL,
    achieved_sparsity REAL,
    accuracy REAL,
    val_accuracy REAL,
    metrics TEXT NOT NULL,
    UNIQUE (run_key, sparsity)
);
"""


def _json_default(obj: Any) -> Any:
    """JSON fallback for numpy / torch scalars and arrays, mappings (a job's spec), paths and sets."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


def dumps(obj: Any) -> str:
    """``obj`` as the store writes JSON: sorted keys, numpy / torch scalars and arrays as numbers."""
    return json.dumps(obj, sort_keys=True, default=_json_default)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _replace_results(c: sqlite3.Connection, run_key: str, rows: Iterable[tuple[Any, ...]]) -> None:
    """Replace the ``results`` rows of ``run_key`` by ``rows``: (method, seed, sparsity, achieved_sparsity,
    accuracy, val_accuracy, metrics as JSON) each. Call inside a write transaction."""
    c.execute("DELETE FROM results WHERE run_key = ?", (run_key,))
    c.executemany(
        """INSERT INTO results (run_key, method, seed, sparsity, achieved_sparsity, accuracy, val_accuracy,
                                metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
        [(run_key, *row) for row in rows],
    )


@functools.cache
def git_commit() -> str:
    """The commit of the repository this package lives in, ``-dirty`` if it has changes; never raises."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return "unknown"
    changes = git("status", "--porcelain")
    return f"{commit}-dirty" if changes else commit


@functools.cache
def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def pid_alive(pid: int, since: float | None = None) -> bool:
    """Whether process ``pid`` is alive on this host (and, where /proc tells, started before ``since``).

    A zombie counts as dead, and so does a process that started after ``since``: the pid was reused.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    try:  # Linux: refine with the process state and start time
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    if fields[0] in ("Z", "X"):
        return False
    boot = _boot_time()
    if since is not None and boot is not None:
        try:
            start = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        except (ValueError, IndexError, OSError):
            return True
        if start > since + 2.0:  # btime has one-second resolution
            return False
    return True


class ResultStore:
    """Results of a sweep in one SQLite file; open one per process (it pickles as its path)."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_PATH, *, stale_after: float = 24 * 3600.0):
        """Open (creating if needed) the store at ``path``.

        ``stale_after``: seconds after which a 'running' claim from *another host* counts as abandoned
        (claims on this host are checked directly: a dead pid is abandoned at once).
        """
        self.path = Path(path)
        self.stale_after = float(stale_after)
        self._conn: sqlite3.Connection | None = None
        self._open()

    # -- connection -------------------------------------------------------------------------------

    def _open(self) -> None:
        where = f"cannot open the results store {str(self.path)!r}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            reason = e.strerror or str(e)
            raise HaloPruneError(f"{where}: cannot create its folder ({reason}); pick another path") from None
        try:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        except sqlite3.Error as e:
            raise HaloPruneError(f"{where}: {e}; pick a writable path") from None
        try:
            conn.execute("PRAGMA busy_timeout = 60000")
            # Switching to WAL needs a moment of exclusive access and SQLite may answer "locked" without
            # waiting for the busy timeout while another process opens the same store: retry.
            for attempt in range(600):
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or attempt == 599:
                        raise
                    time.sleep(0.1)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._conn = conn
            with self._write() as c:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        c.execute(statement)
                version = c.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise HaloPruneError(
                        f"{where}: it was written by a newer haloprune (schema {version}); upgrade haloprune"
                    )
                columns = {row[1] for row in c.execute("PRAGMA table_info(runs)")}
                for added in ("reused_from", "executor", "handle"):  # an older store: results are kept
                    if added not in columns:
                        c.execute(f"ALTER TABLE runs ADD COLUMN {added} TEXT")
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as e:
            conn.close()
            self._conn = None
            raise HaloPruneError(f"{where}: {e}; pick a writable path") from None
        except BaseException:
            conn.close()
            self._conn = None
            raise

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._open()
        assert self._conn is not None
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the write lock up front."""
        conn = self._conn if self._conn is not None else self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection (the store reopens on next use)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "stale_after": self.stale_after}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self.stale_after = state["stale_after"]
        self._conn = None

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    # -- jobs -------------------------------------------------------------------------------------

    def _claim_is_live(self, row: sqlite3.Row | tuple[Any, ...], now: float) -> bool:
        pid, host, started = row
        if host != socket.gethostname():
            return started is not None and now - started < self.stale_after
        return pid is not None and pid_alive(int(pid), since=started)

    def _done_or_running(self, c: sqlite3.Connection, key: str, now: float) -> bool:
        """Whether job ``key`` is done or claimed by a live process (call inside a write transaction)."""
        row = c.execute("SELECT status, pid, host, started FROM runs WHERE key = ?", (key,)).fetchone()
        return row is not None and (
            row[0] == "done" or (row[0] == "running" and self._claim_is_live(row[1:], now))
        )

    def claim(self, job: Job) -> bool:
        """Mark ``job`` running under this process; False if it is done or running in a live process."""
        key = job.key
        now = time.time()
        sparsity = _float_or_none(job.sparsity)
        with self._write() as c:
            if self._done_or_running(c, key, now):
                return False
            values = {
                "key": key,
                "sweep": job.sweep,
                "method": job.method,
                "seed": int(job.seed),
                "sparsity": sparsity,
                "config": dumps(job.spec),
                "hyperparameters": dumps(job.hyperparameters),
                "git_commit": git_commit(),
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": now,
            }
            c.execute(
                """INSERT INTO runs (key, sweep, method, seed, sparsity, config, hyperparameters,
                                     git_commit, status, pid, host, started, attempts)
                   VALUES (:key, :sweep, :method, :seed, :sparsity, :config, :hyperparameters,
                           :git_commit, 'running', :pid, :host, :started, 1)
                   ON CONFLICT (key) DO UPDATE SET
                       sweep = excluded.sweep, method = excluded.method, seed = excluded.seed,
                       sparsity = excluded.sparsity, config = excluded.config,
                       hyperparameters = excluded.hyperparameters, git_commit = excluded.git_commit,
                       status = 'running', pid = excluded.pid, host = excluded.host,
                       started = excluded.started, finished = NULL, wall_seconds = NULL,
                       epochs_used = NULL, error = NULL, attempts = runs.attempts + 1""",
                values,
            )
        return True

    def finish(
        self, job_key: str, records: list[dict[str, Any]], epochs_used: int | None, wall_seconds: float
    ) -> None:
        """Write ``records`` (one per target sparsity) and mark the job done, in one transaction.

        Any results already stored for ``job_key`` (a partial write from an earlier attempt) are replaced.
        Each record needs a ``sparsity`` (the target) unless the job has one; ``achieved_sparsity``,
        ``accuracy`` (test) and ``val_accuracy`` fill their columns, and the whole record is kept as JSON.
        """
        rows = []
        with self._write() as c:
            run = c.execute("SELECT method, seed, sparsity FROM runs WHERE key = ?", (job_key,)).fetchone()
            if run is None:
                raise KeyError(f"no run {job_key!r} in {self.path}: claim the job before finishing it")
            method, seed, job_sparsity = run
            seen: set[float] = set()
            for record in records:
                target = _float_or_none(record.get("sparsity", job_sparsity))
                if target is None or math.isnan(target):
                    raise ValueError(f"run {job_key}: a result record has no target 'sparsity'")
                if target in seen:
                    raise ValueError(f"run {job_key}: two result records for sparsity {target}")
                seen.add(target)
                rows.append(
                    (
                        method,
                        seed,
                        target,
                        _float_or_none(record.get("achieved_sparsity")),
                        _float_or_none(record.get("accuracy")),
                        _float_or_none(record.get("val_accuracy")),
                        dumps(record),
                    )
                )
            _replace_results(c, job_key, rows)
            c.execute(
                """UPDATE runs SET status = 'done', finished = ?, wall_seconds = ?, epochs_used = ?,
                                   error = NULL WHERE key = ?""",
                (
                    time.time(),
                    float(wall_seconds),
                    None if epochs_used is None else int(epochs_used),
                    job_key,
                ),
            )

    def adopt(self, job: Job) -> dict[str, Any] | None:
        """Take over the results of a finished job that computes the same as ``job``, from any sweep.

        Equal means: same seed, target sparsity and hyperparameters, and the same spec up to
        ``job.not_in_result`` (the sweep's and the method's names do not count). The results are copied
        under ``job``'s key and method name, which is marked done with ``reused_from`` naming the run that
        computed them (its git commit, wall time and epochs are kept). Returns that run (as :meth:`run`),
        or None when there is none or ``job`` is already done or running in a live process.
        """
        wanted = job.result_spec()
        now = time.time()
        with self._write() as c:
            if self._done_or_running(c, job.key, now):
                return None
            candidates = c.execute(
                """SELECT key, config, reused_from FROM runs WHERE status = 'done' AND key != ?
                   AND seed = ? AND sparsity IS ? AND hyperparameters = ? ORDER BY finished""",
                (job.key, int(job.seed), _float_or_none(job.sparsity), dumps(job.hyperparameters)),
            ).fetchall()
            match = next(
                ((k, r) for k, cfg, r in candidates if job.result_spec(json.loads(cfg)) == wanted), None
            )
            if match is None:
                return None
            source, origin = match[0], match[1] or match[0]
            c.execute(
                """INSERT INTO runs (key, sweep, method, seed, sparsity, config, hyperparameters, git_commit,
                                     status, host, started, finished, wall_seconds, epochs_used, attempts,
                                     reused_from)
                   SELECT :key, :sweep, :method, seed, sparsity, :config, hyperparameters, git_commit,
                          'done', host, started, :now, wall_seconds, epochs_used, 0, :origin
                   FROM runs WHERE key = :source
                   ON CONFLICT (key) DO UPDATE SET
                       sweep = excluded.sweep, method = excluded.method, config = excluded.config,
                       git_commit = excluded.git_commit, status = 'done', pid = NULL, host = excluded.host,
                       started = excluded.started, finished = excluded.finished,
                       wall_seconds = excluded.wall_seconds, epochs_used = excluded.epochs_used,
                       error = NULL, reused_from = excluded.reused_from""",
                {
                    "key": job.key,
                    "sweep": job.sweep,
                    "method": job.method,
                    "config": dumps(job.spec),
                    "now": now,
                    "origin": origin,
                    "source": source,
                },
            )
            copied = c.execute(
                """SELECT sparsity, achieved_sparsity, accuracy, val_accuracy, metrics FROM results
                   WHERE run_key = ?""",
                (source,),
            ).fetchall()
            rows = [
                (job.method, int(job.seed), *values, dumps({**json.loads(metrics), "method": job.method}))
                for *values, metrics in copied
            ]
            _replace_results(c, job.key, rows)
        return self.run(source)

    def fail(self, job_key: str, error: str) -> None:
        """Mark the job failed with a one-line ``error`` (a later sweep retries it)."""
        line = " ".join(str(error).split())
        with self._write() as c:
            c.execute(
                "UPDATE runs SET status = 'failed', finished = ?, error = ? WHERE key = ?",
                (time.time(), line, job_key),
            )

    def set_handle(self, job_key: str, executor: str, handle: str) -> None:
        """Record where the claimed job was submitted: the executor's name and its handle for the job."""
        with self._write() as c:
            c.execute("UPDATE runs SET executor = ?, handle = ? WHERE key = ?", (executor, handle, job_key))

    def handle(self, job_key: str, executor: str) -> str | None:
        """The handle ``executor`` gave the job when it was last submitted (None: never, or elsewhere)."""
        row = self.conn.execute("SELECT executor, handle FROM runs WHERE key = ?", (job_key,)).fetchone()
        return row[1] if row is not None and row[0] == executor else None

    def claimed_live(self, job_key: str) -> bool:
        """Whether the job is 'running' under a driver that is still alive."""
        row = self.conn.execute(
            "SELECT status, pid, host, started FROM runs WHERE key = ?", (job_key,)
        ).fetchone()
        return row is not None and row[0] == "running" and self._claim_is_live(row[1:], time.time())

    def release(self, job_key: str) -> None:
        """Give a claimed job back (status 'pending'), e.g. after an interrupt in this process."""
        with self._write() as c:
            c.execute(
                "UPDATE runs SET status = 'pending', pid = NULL WHERE key = ? AND status = 'running'",
                (job_key,),
            )

    # -- queries ----------------------------------------------------------------------------------

    def is_done(self, key: str) -> bool:
        """Whether the job ``key`` finished and its results are stored."""
        row = self.conn.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchone()
        return row is not None and row[0] == "done"

    def sweeps(self) -> list[str]:
        """The names of the sweeps with a job in the store, sorted."""
        return [row[0] for row in self.conn.execute("SELECT DISTINCT sweep FROM runs ORDER BY 1")]

    def status(self, sweep: str | None = None) -> dict[str, int]:
        """Number of jobs in each status (all four statuses present), optionally for one sweep."""
        sql = "SELECT status, COUNT(*) FROM runs"
        args: tuple[Any, ...] = ()
        if sweep is not None:
            sql += " WHERE sweep = ?"
            args = (sweep,)
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in self.conn.execute(sql + " GROUP BY status", args):
            counts[status] = n
        return counts

    def run(self, key: str) -> dict[str, Any] | None:
        """The ``runs`` row of ``key`` as a dict (config and hyperparameters parsed), or None."""
        cur = self.conn.execute("SELECT * FROM runs WHERE key = ?", (key,))
        row = cur.fetchone()
        if row is None:
            return None
        out = dict(zip([d[0] for d in cur.description], row, strict=True))
        out["config"] = json.loads(out["config"])
        out["hyperparameters"] = json.loads(out["hyperparameters"])
        return out

    def records(self, sweep: str | None = None) -> list[dict[str, Any]]:
        """Every stored result (finished runs only), ordered by sweep, method, seed and sparsity.

        Each record is the job's metrics dict plus ``method``, ``seed``, ``sparsity``,
        ``achieved_sparsity``, ``accuracy``, ``val_accuracy``, ``hyperparameters`` (parsed), ``sweep``,
        ``run_key``, ``git_commit``, ``wall_seconds``, ``epochs_used`` and ``reused_from`` (the run whose
        results these are, when taken over from another sweep, else None).
        """
        sql = """SELECT r.metrics, r.method, r.seed, r.sparsity, r.achieved_sparsity, r.accuracy,
                        r.val_accuracy, u.hyperparameters, u.sweep, r.run_key, u.git_commit,
                        u.wall_seconds, u.epochs_used, u.reused_from
                 FROM results AS r JOIN runs AS u ON u.key = r.run_key
                 WHERE u.status = 'done'"""
        args: tuple[Any, ...] = ()
        if sweep is not None:
            sql += " AND u.sweep = ?"
            args = (sweep,)
        sql += " ORDER BY u.sweep, r.method, r.seed, r.sparsity, r.run_key"
        out = []
        for metrics, *rest in self.conn.execute(sql, args):
            record = json.loads(metrics)
            fields = dict(
                zip(
                    (
                        "method",
                        "seed",
                        "sparsity",
                        "achieved_sparsity",
                        "accuracy",
                        "val_accuracy",
                        "hyperparameters",
                        "sweep",
                        "run_key",
                        "git_commit",
                        "wall_seconds",
                        "epochs_used",
                        "reused_from",
                    ),
                    rest,
                    strict=True,
                )
            )
            fields["hyperparameters"] = json.loads(fields["hyperparameters"])
            record.update(fields)
            out.append(record)
        return out
