"""Results store and sweep runner, with fake jobs (no training); a store written before the package layout
changed is read and its jobs skipped."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haloprune.cli import main
from haloprune.core.errors import HaloPruneError
from haloprune.experiments.jobs import Job, JobSpec, WorkerSettings
from haloprune.experiments.paths import SweepPaths
from haloprune.experiments.runner import run_sweep, worker_threads
from haloprune.experiments.store import SCHEMA_VERSION, ResultStore, git_commit
from haloprune.experiments.sweep_report import sweep_report

SPARSITIES = [0.5, 0.9]


_calls = 0


def fake_job(
    job: Job, threads: int, checkpoints: Path, settings: WorkerSettings
) -> tuple[list[dict[str, Any]], int]:
    """One record per target sparsity, with the threads, process and settings it ran with; sleeps /
    raises / hangs as ``job.spec`` and the env ask."""
    global _calls
    _calls += 1
    hang_after = int(os.environ.get("FAKE_HANG_AFTER", "-1"))
    if 0 <= hang_after < _calls:
        time.sleep(60)
    time.sleep(job.spec.get("sleep", 0.0))
    if job.spec.get("fail"):
        raise ValueError("boom\nsecond line")
    sparsities = [job.sparsity] if job.sparsity is not None else job.spec["sparsities"]
    records = [
        {
            "sparsity": s,
            "achieved_sparsity": s + 0.001,
            "accuracy": 0.9 - 0.1 * s + 0.001 * job.seed,
            "val_accuracy": 0.91 - 0.1 * s,
            "threads": threads,
            "pid": os.getpid(),
            "bar_slot": settings.bar_slot,
            "progress": settings.progress,
            "data_dir": settings.data_dir,
        }
        for s in sparsities
    ]
    return records, 3


def make_jobs(sweep: str = "test", n_seeds: int = 3, **spec: Any) -> list[Job]:
    """2 methods x ``n_seeds`` seeds; each job serves every sparsity in SPARSITIES."""
    return [
        Job(sweep, method, seed, None, {"sparsities": SPARSITIES, **spec}, {"lr": 0.1, "method": method})
        for method in ("dense", "halo")
        for seed in range(n_seeds)
    ]


def sql(path: Path, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on the store's file directly (committed), as another program would."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            return conn.execute(statement, args).fetchall()
    finally:
        conn.close()


def n_result_rows(path: Path) -> int:
    return sql(path, "SELECT COUNT(*) FROM results")[0][0]


PARTIAL_ROW = "INSERT INTO results (run_key, method, seed, sparsity, metrics) VALUES (?, 'd', 0, 0.5, '{}')"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with ResultStore(tmp_path / "runs" / "results.sqlite") as s:
        yield s


def per_target_jobs(sweep: str, method: str, sparsities: list[float], **hyper: Any) -> list[Job]:
    """One job per target, as the harness makes them: the list and the state folder do not count."""
    spec = {"kind": "k", "sparsities": sparsities, "states": f"runs/{sweep}/states"}
    return [
        Job(sweep, method, 0, s, spec, {"lr": 0.1, **hyper}, ("states", "sparsities")) for s in sparsities
    ]


def test_sweep_records_everything_and_rerun_skips(store: ResultStore) -> None:
    jobs = make_jobs()
    summary = run_sweep(jobs, fake_job, store, progress=False)
    assert summary["done"] == 6 and summary["skipped"] == 0 and summary["failed"] == []
    assert store.status("test") == {"pending": 0, "running": 0, "done": 6, "failed": 0}
    assert all(store.is_done(j.key) for j in jobs)

    records = store.records("test")
    assert len(records) == 12
    assert {(r["method"], r["seed"], r["sparsity"]) for r in records} == {
        (j.method, j.seed, s) for j in jobs for s in SPARSITIES
    }
    r = records[0]
    assert r["hyperparameters"]["lr"] == 0.1 and r["epochs_used"] == 3 and r["wall_seconds"] >= 0
    assert r["threads"] == worker_threads(1) and r["pid"] == os.getpid()
    assert (r["bar_slot"], r["progress"], r["data_dir"]) == (1, False, None)  # progress=False: every bar
    assert r["achieved_sparsity"] == pytest.approx(r["sparsity"] + 0.001)
    assert r["run_key"] in {j.key for j in jobs} and r["git_commit"] == git_commit()
    assert store.records("other") == []

    again = run_sweep(jobs, fake_job, store, progress=False)
    assert again["done"] == 0 and again["skipped"] == 6
    assert n_result_rows(store.path) == 12
    assert all(store.run(j.key)["attempts"] == 1 for j in jobs)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_jobs_run_after_the_jobs_they_need(store: ResultStore, n_jobs: int) -> None:
    """A job listed before the job it needs still runs after it; a job whose need failed fails with a
    line naming it, is never run, and runs on the rerun that gets its need done."""
    base = Job("test", "pretrain", 0, None, {"sparsities": SPARSITIES}, {})
    broken = Job("test", "pretrain", 1, None, {"sparsities": SPARSITIES, "fail": True}, {})
    after = [
        Job("test", "ft", seed, None, {"sparsities": SPARSITIES}, {}, needs=(need.key,))
        for seed, need in ((0, base), (1, broken))
    ]
    summary = run_sweep([*after, base, broken], fake_job, store, n_jobs=n_jobs, progress=False)
    assert summary["done"] == 2 and {k for k, _ in summary["failed"]} == {broken.key, after[1].key}
    started = {j.key: store.run(j.key)["started"] for j in (base, after[0])}
    assert started[base.key] <= started[after[0].key]
    error = dict(summary["failed"])[after[1].key]
    assert error.startswith(f"needs job {broken.key}, which did not finish") and "\n" not in error
    assert store.records("test") and not [r for r in store.records() if r["run_key"] == after[1].key]

    fixed = Job("test", "pretrain", 1, None, {"sparsities": SPARSITIES}, {})
    retry = dataclasses.replace(after[1], needs=(fixed.key,))
    again = run_sweep([retry, fixed], fake_job, store, n_jobs=n_jobs, progress=False)
    assert again["done"] == 2 and again["failed"] == []


def test_jobs_that_need_each_other_are_refused(store: ResultStore) -> None:
    a = Job("test", "a", 0, None, {}, {}, needs=("x",))
    b = Job("test", "b", 0, None, {}, {}, needs=(a.key,))
    a_loop = dataclasses.replace(a, needs=(b.key,))
    with pytest.raises(ValueError, match="cycle"):
        run_sweep([a_loop, b], fake_job, store, progress=False)


def test_parallel_spawn_workers(store: ResultStore) -> None:
    """The worker settings travel in each task to the spawned processes; each job in flight has a bar
    line of its own."""
    jobs = make_jobs(n_seeds=2)
    environ = dict(os.environ)
    settings = WorkerSettings(data_dir="elsewhere", progress=False)
    summary = run_sweep(jobs, fake_job, store, n_jobs=2, progress=False, settings=settings)
    assert summary["done"] == 4 and summary["failed"] == []
    records = store.records()
    assert len(records) == 8
    assert {r["threads"] for r in records} == {worker_threads(2)}
    assert os.getpid() not in {r["pid"] for r in records}
    assert {r["data_dir"] for r in records} == {"elsewhere"} and {r["bar_slot"] for r in records} <= {1, 2}
    assert dict(os.environ) == environ  # nothing went through the environment


def test_failing_job_is_recorded_and_others_finish(store: ResultStore) -> None:
    jobs = make_jobs()
    bad = dataclasses.replace(jobs[2], spec={**jobs[2].spec, "fail": True})
    jobs[2] = bad
    summary = run_sweep(jobs, fake_job, store, progress=False)
    assert summary["done"] == 5
    [(key, error)] = summary["failed"]
    assert key == bad.key and error.startswith("ValueError: boom second line (at test_store.py:")
    assert store.status() == {"pending": 0, "running": 0, "done": 5, "failed": 1}
    assert store.run(bad.key)["error"] == error and len(store.records()) == 10

    again = run_sweep(jobs, fake_job, store, progress=False)  # failures are retried, the rest skipped
    assert again["skipped"] == 5 and len(again["failed"]) == 1
    assert store.run(bad.key)["attempts"] == 2


def test_killed_sweep_resumes_without_loss_or_double_counting(store: ResultStore) -> None:
    jobs = make_jobs()
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from haloprune.experiments.store import ResultStore
        from haloprune.experiments.runner import run_sweep
        from test_store import fake_job, make_jobs
        run_sweep(make_jobs(), fake_job, ResultStore({str(store.path)!r}), progress=False)
        """
    )
    env = {**os.environ, "FAKE_HANG_AFTER": "2"}  # the third job hangs
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 30
        while store.status() != {"pending": 0, "running": 1, "done": 2, "failed": 0}:
            assert proc.poll() is None, "the sweep subprocess exited early"
            assert time.monotonic() < deadline, store.status()
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    [killed] = [j for j in jobs if (store.run(j.key) or {}).get("status") == "running"]
    assert store.run(killed.key)["pid"] == proc.pid

    summary = run_sweep(jobs, fake_job, store, progress=False)
    assert summary["done"] == 4 and summary["skipped"] == 2 and summary["failed"] == []
    assert store.status() == {"pending": 0, "running": 0, "done": 6, "failed": 0}
    assert store.run(killed.key)["attempts"] == 2
    assert n_result_rows(store.path) == len(jobs) * len(SPARSITIES) == len(store.records())


def test_claim_respects_live_claims(store: ResultStore, tmp_path: Path) -> None:
    job = make_jobs()[0]
    assert store.claim(job)
    other = ResultStore(store.path)
    assert not other.claim(job)  # running under a live pid (ours) on this host
    # another host, claimed just now: live
    sql(store.path, "UPDATE runs SET host = 'elsewhere', started = ? WHERE key = ?", time.time(), job.key)
    assert not other.claim(job)
    assert ResultStore(store.path, stale_after=60).claim(job) is False
    # ... and once stale: taken over
    sql(store.path, "UPDATE runs SET started = ? WHERE key = ?", time.time() - 120, job.key)
    assert ResultStore(store.path, stale_after=60).claim(job)
    store.finish(job.key, [{"sparsity": 0.5}], 1, 0.1)
    assert not other.claim(job)  # done


def test_concurrent_sweeps_run_each_job_once(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    jobs = make_jobs(sleep=0.05)
    summaries: list[dict[str, Any]] = []

    def sweep() -> None:
        summaries.append(run_sweep(jobs, fake_job, ResultStore(path), progress=False))

    threads = [threading.Thread(target=sweep) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(s["done"] for s in summaries) == 6
    store = ResultStore(path)
    assert all(store.run(j.key)["attempts"] == 1 for j in jobs)
    assert n_result_rows(path) == 12


def test_finish_replaces_partial_results(store: ResultStore) -> None:
    job = make_jobs()[0]
    assert store.claim(job)
    sql(store.path, PARTIAL_ROW, job.key)  # a partial write left by an earlier attempt
    records, _ = fake_job(job, 1, store.path.parent, WorkerSettings())
    store.finish(job.key, records, 3, 1.0)
    assert n_result_rows(store.path) == 2 and len(store.records()) == 2
    store.finish(job.key, records[:1], 3, 1.0)
    assert n_result_rows(store.path) == 1
    with pytest.raises(ValueError, match="two result records"):
        store.finish(job.key, [records[0], records[0]], 3, 1.0)
    assert n_result_rows(store.path) == 1  # the failed finish rolled back
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        sql(store.path, PARTIAL_ROW, job.key)
    with pytest.raises(KeyError):
        store.finish("nosuchkey", records, 3, 1.0)


def test_unwritable_store_path(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    with pytest.raises(HaloPruneError, match="cannot open the results store") as info:
        ResultStore(afile / "x.sqlite")
    assert "\n" not in str(info.value)
    with pytest.raises(HaloPruneError):
        ResultStore(afile)  # a file that is not a database


def test_store_pickles_as_its_path(store: ResultStore) -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(store))
    assert copy.path == store.path and copy.status()["done"] == 0


def test_job_key_stable_and_sensitive_to_each_field() -> None:
    job = Job("s", "halo", 0, 0.5, {"a": 1, "b": [1, 2]}, {"lr": 0.1})
    assert job.key == Job("s", "halo", 0, 0.5, {"b": [1, 2], "a": 1}, {"lr": 0.1}).key
    assert len(job.key) == 16 and int(job.key, 16) >= 0
    assert job.key == "b94a8f5494abc5e2"  # canonical form must not drift: stored runs would be redone
    changes = {
        "sweep": "t",
        "method": "dense",
        "seed": 1,
        "sparsity": None,
        "spec": {"a": 2, "b": [1, 2]},
        "hyperparameters": {"lr": 0.2},
    }
    keys = {dataclasses.replace(job, **{field: value}).key for field, value in changes.items()}
    assert len(keys) == len(changes) and job.key not in keys
    assert dataclasses.replace(job, sparsity=0.9).key != job.key
    with pytest.raises(TypeError, match="JSON-able"):
        Job("s", "halo", 0, None, {"x": object()}, {})


def test_a_job_spec_is_its_json_form(store: ResultStore) -> None:
    """A sweep job's typed spec hashes, stores and compares as the plain dict it replaced."""
    pre = JobSpec({"optim": {"epochs": 2}}, "penalty", {"penalty": {"name": "none"}}, (0.5, 0.9))
    spec = JobSpec({"optim": {"epochs": 1}}, "k", {"a": 1}, (0.5, 0.9), "runs/s/states", pretrain=pre)
    plain = json.loads(json.dumps(dict(spec)))
    assert plain == {
        "run": {"optim": {"epochs": 1}},
        "kind": "k",
        "params": {"a": 1},
        "sparsities": [0.5, 0.9],
        "states": "runs/s/states",
        "pretrain": {
            "run": {"optim": {"epochs": 2}},
            "kind": "penalty",
            "params": {"penalty": {"name": "none"}},
            "sparsities": [0.5, 0.9],
        },
    }
    assert Job("s", "m", 0, None, spec, {}).key == Job("s", "m", 0, None, plain, {}).key
    assert spec == plain and JobSpec.of(plain) == spec and JobSpec.of(spec) is spec
    assert pickle.loads(pickle.dumps(spec)) == spec and spec.pretrain is not None
    assert spec.pretrain.epochs == 2 and spec.state_file("k1") == Path("runs/s/states/k1.pt")
    with pytest.raises(ValueError, match="unknown entries sleep"):
        JobSpec.of({**plain, "sleep": 1})
    job = Job("s", "m", 0, None, spec, {})
    assert store.claim(job) and store.run(job.key)["config"] == plain


def test_a_job_done_by_another_sweep_is_taken_over_not_rerun(store: ResultStore) -> None:
    first = per_target_jobs("a", "gmp", [0.5, 0.9])
    assert run_sweep(first, fake_job, store, progress=False)["done"] == 2

    seen: list[tuple[str, str]] = []
    second = per_target_jobs("b", "gmp-cubic", [0.5, 0.9, 0.99])
    summary = run_sweep(
        second, fake_job, store, progress=False, adopted=lambda j, src: seen.append((j.key, src["key"]))
    )
    assert (summary["reused"], summary["done"], summary["skipped"]) == (2, 1, 0)
    assert seen == [(second[0].key, first[0].key), (second[1].key, first[1].key)]

    a, b = store.records("a"), store.records("b")
    assert [r["method"] for r in b] == ["gmp-cubic"] * 3
    for ra, rb in zip(a, b[:2], strict=True):
        assert rb["accuracy"] == ra["accuracy"] and rb["pid"] == ra["pid"]  # copied, not recomputed
        assert rb["reused_from"] == ra["run_key"] and rb["git_commit"] == ra["git_commit"]
    assert b[2]["reused_from"] is None and ra["reused_from"] is None
    run = store.run(second[0].key)
    assert run is not None and run["sweep"] == "b" and run["attempts"] == 0 and run["status"] == "done"
    text, _ = sweep_report(store, SweepPaths(store.path, "b"), figures=False)
    assert "2 of 3 runs were identical jobs already run by sweep a" in text

    # a third sweep taking over from the second names the run that computed the results
    third = per_target_jobs("c", "gmp", [0.5])
    assert run_sweep(third, fake_job, store, progress=False)["reused"] == 1
    assert store.records("c")[0]["reused_from"] == first[0].key
    assert run_sweep(second + third, fake_job, store, progress=False)["skipped"] == 4


def test_reuse_needs_equal_results_and_can_be_switched_off(store: ResultStore) -> None:
    run_sweep(per_target_jobs("a", "gmp", [0.5]), fake_job, store, progress=False)
    other_lr = per_target_jobs("b", "gmp", [0.5], lr=0.2)
    assert run_sweep(other_lr, fake_job, store, progress=False)["done"] == 1
    other_spec = [
        dataclasses.replace(j, sweep="c", spec={**j.spec, "kind": "k2"})
        for j in per_target_jobs("c", "gmp", [0.5])
    ]
    assert run_sweep(other_spec, fake_job, store, progress=False)["done"] == 1
    multi = make_jobs("d", n_seeds=1)  # "sparsities" counts for jobs that serve every target
    run_sweep(multi, fake_job, store, progress=False)
    changed = [
        dataclasses.replace(j, sweep="e", spec={**j.spec, "sparsities": [0.5, 0.9, 0.99]}) for j in multi
    ]
    assert run_sweep(changed, fake_job, store, progress=False)["done"] == 2
    off = per_target_jobs("f", "gmp", [0.5])
    summary = run_sweep(off, fake_job, store, progress=False, reuse=False)
    assert (summary["reused"], summary["done"]) == (0, 1)


def test_a_failed_run_is_never_taken_over(store: ResultStore) -> None:
    failing = [
        dataclasses.replace(j, spec={**j.spec, "fail": True}) for j in per_target_jobs("a", "gmp", [0.5])
    ]
    run_sweep(failing, fake_job, store, progress=False)
    again = [dataclasses.replace(j, sweep="b") for j in failing]
    summary = run_sweep(again, fake_job, store, progress=False)
    assert summary["reused"] == 0 and len(summary["failed"]) == 1


def test_a_schema_1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old_schema = """CREATE TABLE runs (key TEXT PRIMARY KEY, sweep TEXT NOT NULL, method TEXT NOT NULL,
        seed INTEGER NOT NULL, sparsity REAL, config TEXT NOT NULL, hyperparameters TEXT NOT NULL,
        git_commit TEXT, status TEXT NOT NULL, pid INTEGER, host TEXT, started REAL, finished REAL,
        wall_seconds REAL, epochs_used INTEGER, error TEXT, attempts INTEGER NOT NULL DEFAULT 0)"""
    sql(path, old_schema)
    sql(
        path,
        "CREATE TABLE results (run_key TEXT NOT NULL, method TEXT NOT NULL, seed INTEGER NOT NULL, "
        "sparsity REAL NOT NULL, achieved_sparsity REAL, accuracy REAL, val_accuracy REAL, "
        "metrics TEXT NOT NULL, UNIQUE (run_key, sparsity))",
    )
    sql(
        path,
        "INSERT INTO runs VALUES ('k', 's', 'm', 0, NULL, '{}', '{}', 'c', 'done', 1, 'h', 0, 1, 1, 2, "
        "NULL, 1)",
    )
    sql(path, "INSERT INTO results VALUES ('k', 'm', 0, 0.5, 0.5, 0.8, 0.81, '{}')")
    sql(path, "PRAGMA user_version = 1")
    with ResultStore(path) as s:
        assert s.is_done("k")
        (record,) = s.records("s")
        assert record["accuracy"] == 0.8 and record["reused_from"] is None
    assert sql(path, "PRAGMA user_version")[0][0] == SCHEMA_VERSION == 3


def test_sweeps_lists_every_sweep_and_the_cli_reports_them_all(
    store: ResultStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert store.sweeps() == []
    run_sweep(make_jobs("zeta", n_seeds=1), fake_job, store, progress=False)
    run_sweep(make_jobs("alpha", n_seeds=1), fake_job, store, progress=False)
    store.claim(make_jobs("pending-only", n_seeds=1)[0])  # a sweep with no finished job yet
    assert store.sweeps() == ["alpha", "pending-only", "zeta"]
    assert main(["report", "--db", str(store.path), "--json"]) == 0
    out = capsys.readouterr()
    assert {r["sweep"] for r in json.loads(out.out)} == {"alpha", "zeta"}
    assert "sweep pending-only: no finished runs yet" in out.err


LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "store-0.x"


def test_a_store_written_before_the_layout_change_is_read_and_its_jobs_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fixtures/store-0.x/results.sqlite`` was written by the package at commit 9f039c5 (before the
    layout by layer) from ``fixtures/store-0.x/sweep.toml``: the same config finds every job done."""
    for name in ("sweep.toml", "results.sqlite"):
        (tmp_path / name).write_bytes((LEGACY / name).read_bytes())
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "sweep.toml", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "done 0, skipped 4 (already done)" in out
    assert "| magnitude | **74.60** | **23.20** | 2 |" in out
    assert "| halo | 74.20 | 22.80 | 2 |" in out
    # Both fine-tuning rates tie on validation at 98% (13.20): the earlier grid point is chosen.
    assert "| magnitude-ft | 70.40 | 11.20 | 2 |" in out
    assert main(["report", "--db", "results.sqlite", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 8 and {r["git_commit"][:7] for r in records} == {"9f039c5"}
    assert {r["method"] for r in records} == {"magnitude", "magnitude-ft", "halo"}
