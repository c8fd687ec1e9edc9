"""Sweeps on every executor, with the real packages: submitit's local cluster (the same code path as
SLURM) and a local Ray cluster. The same jobs give the same records everywhere; a driver killed mid-sweep
and started again finishes without running a finished job again or counting one twice (re-attaching to
the jobs still running on submitit and Ray); a worker killed or preempted mid-job resumes from its
checkpoint and ends bit-identical to a job never interrupted."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from haloprune.cli import _with_executor, main
from haloprune.core.errors import HaloPruneError
from haloprune.core.io import load_torch
from haloprune.experiments.config import ExecutorConfig, load_sweep_config
from haloprune.experiments.executors import JobError, JobResult, JobTask, SubmititExecutor
from haloprune.experiments.executors.base import read_result
from haloprune.experiments.jobs import Job
from haloprune.experiments.paths import SweepPaths
from haloprune.experiments.runner import run_sweep
from haloprune.experiments.store import ResultStore
from haloprune.experiments.sweep import copy_state, expand, run_job, worker_settings
from tests.experiments.executor_jobs import epoch_logged_job, logged_job
from tests.helpers import REPO

MAIN = REPO / "configs" / "main.toml"


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers import the test jobs from this checkout; a test Ray cluster needs no token."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_cluster(worker_env: None) -> Iterator[str]:
    """A Ray cluster of 2 CPUs on this machine that outlives the drivers connected to it."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    port = _free_port()
    start = [ray, "start", "--head", "--num-cpus=2", f"--port={port}", "--node-ip-address=127.0.0.1"]
    start += ["--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(start, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)


# ------------------------------------------------------------------ the same records on every executor


def _quick_sweep(
    folder: Path, executor: list[str], monkeypatch: pytest.MonkeyPatch
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The --quick sweep of configs/main.toml run in ``folder`` (its store runs/results.sqlite there)."""
    folder.mkdir()
    monkeypatch.chdir(folder)
    args = ["sweep", str(MAIN), "--quick", "--quiet"]
    for setting in executor:
        args += ["--set", f"executor.{setting}"]
    assert main(args) == 0
    with ResultStore("runs/results.sqlite") as store:
        return {(r["run_key"], r["sparsity"]): r for r in store.records()}


def test_quick_sweep_gives_the_same_records_on_every_executor(
    real_fmnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _quick_sweep(tmp_path / "local", [], monkeypatch)
    submitit = _quick_sweep(tmp_path / "submitit", ["name='submitit'", "cluster='local'"], monkeypatch)
    ray = _quick_sweep(tmp_path / "ray", ["name='ray'", "num_cpus=2"], monkeypatch)
    # 6 jobs: halo and gmp once per target, magnitude-ft and dense once for both targets
    assert len({key for key, _ in local}) == 6 and len(local) == 8
    columns = ("method", "seed", "accuracy", "val_accuracy", "achieved_sparsity", "epochs_used", "metrics")
    for other in (submitit, ray):
        assert other.keys() == local.keys()  # the same job keys ...
        for k, r in local.items():  # ... and the same numbers, bit for bit
            assert {c: other[k].get(c) for c in columns} == {c: r.get(c) for c in columns}
        assert all(other[k]["wall_seconds"] > 0 for k in other)


def test_the_same_sweep_from_python_and_from_the_cli_records_the_same_jobs(
    real_fmnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`haloprune sweep` is run_sweep with the config's worker settings, nothing in the environment: from
    Python (here on a pool of spawned workers, which get the settings in their tasks) the same jobs give
    the same records and runs, and save the same states."""
    environ = dict(os.environ)
    cli = _quick_sweep(tmp_path / "cli", [], monkeypatch)
    assert dict(os.environ) == environ  # the CLI told its workers nothing through the environment
    (tmp_path / "python").mkdir()
    monkeypatch.chdir(tmp_path / "python")
    cfg = load_sweep_config(MAIN, quick=True)
    jobs = expand(cfg)
    with ResultStore(cfg.db) as store:
        summary = run_sweep(
            jobs,
            run_job,
            store,
            n_jobs=2,
            progress=False,
            adopted=copy_state,
            executor=cfg.executor,
            settings=worker_settings(cfg, progress=False),
        )
        python = {(r["run_key"], r["sparsity"]): r for r in store.records()}
        python_runs = {j.key: store.run(j.key) for j in jobs}
    assert summary["done"] == len(jobs) == 6 and summary["failed"] == []
    assert python.keys() == cli.keys() and {k for k, _ in cli} == {j.key for j in jobs}
    columns = ("method", "seed", "accuracy", "val_accuracy", "achieved_sparsity", "epochs_used", "metrics")
    for k, r in cli.items():
        assert {c: python[k].get(c) for c in columns} == {c: r.get(c) for c in columns}
    fields = ("sweep", "method", "seed", "sparsity", "config", "hyperparameters", "status", "epochs_used")
    with ResultStore(tmp_path / "cli" / cfg.db) as store:
        for key, run in python_runs.items():
            assert {f: run[f] for f in fields} == {f: store.run(key)[f] for f in fields}
    states = sorted(p.name for p in cfg.paths.states.iterdir())
    assert states == sorted(p.name for p in (tmp_path / "cli" / cfg.paths.states).iterdir()) and states


# --------------------------------------------------------------------- a driver killed and started again

N_JOBS = 6


def _jobs(log: Path, sleep: float) -> list[Job]:
    spec = {"sparsities": [0.5, 0.9], "log": str(log), "sleep": sleep}
    return [Job("kill", f"m{i}", 0, None, {**spec, "i": i}, {}, ("log", "sleep")) for i in range(N_JOBS)]


DRIVER = """
import sys
from pathlib import Path
from haloprune.experiments.config import ExecutorConfig
from haloprune.experiments.runner import run_sweep
from haloprune.experiments.store import ResultStore
from tests.experiments.executor_jobs import logged_job
from tests.experiments.test_executors import _jobs
cfg = ExecutorConfig.model_validate_json(sys.argv[3])
run_sweep(_jobs(Path(sys.argv[2]), 2.5), logged_job, ResultStore(sys.argv[1]), n_jobs=2, progress=False,
          executor=cfg)
"""


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[bytes] | None, what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert proc is None or proc.poll() is None, f"the driver exited early ({what})"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _kill_driver_mid_sweep(tmp_path: Path, cfg: ExecutorConfig) -> tuple[ResultStore, Path, list[Job]]:
    """Start a driver in a process of its own, SIGKILL it once a job is done and others run."""
    db, log = tmp_path / "runs" / "results.sqlite", tmp_path / "jobs.log"
    store = ResultStore(db)
    script = textwrap.dedent(DRIVER)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(db), str(log), cfg.model_dump_json(exclude_unset=True)]
    )
    try:

        def mid_sweep() -> bool:  # a job recorded, another in the middle of its work, some not started
            status = store.status()
            started = _lines(log, "start") if log.exists() else Counter()
            ended = _lines(log, "end") if log.exists() else Counter()
            working = any(k not in ended for k in started)
            return status["done"] >= 1 and working and status["done"] + status["running"] < N_JOBS

        _wait_for(mid_sweep, proc, "a job done and another running")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return store, log, _jobs(log, 2.5)


def _lines(log: Path, word: str) -> Counter[str]:
    return Counter(line.split()[1] for line in log.read_text().splitlines() if line.startswith(word + " "))


def _lost(store: ResultStore, log: Path, jobs: list[Job]) -> set[str]:
    """Jobs whose work ended (their last log line is written) but whose result neither the store nor their
    work folder holds: killed between their last line and handing the result back, they must run again."""
    ended = _lines(log, "end")
    return {j.key for j in jobs if ended[j.key] and not store.is_done(j.key) and not _collectable(store, j)}


def _collectable(store: ResultStore, job: Job) -> bool:
    """The driver finds this job's result in its work folder (and would not run it again)."""
    return read_result(SweepPaths(store.path, job.sweep).work(job.key)) is not None


def _finish_and_check(store: ResultStore, log: Path, jobs: list[Job], cfg: ExecutorConfig) -> dict[str, Any]:
    done_before = {j.key for j in jobs if store.is_done(j.key)}
    collectable = {j.key for j in jobs if _collectable(store, j)}
    ended_before = _lines(log, "end")
    summary = run_sweep(jobs, logged_job, store, n_jobs=2, progress=False, executor=cfg)
    assert summary["failed"] == [] and summary["skipped"] == len(done_before), summary
    assert summary["done"] == N_JOBS - len(done_before), summary
    assert store.status() == {"pending": 0, "running": 0, "done": N_JOBS, "failed": 0}
    assert len(store.records()) == N_JOBS * 2  # no job counted twice
    ended = _lines(log, "end")
    assert set(ended) == {j.key for j in jobs}
    # a job whose result was recorded or left in its work folder never runs again; any other runs once more
    assert all(ended[k] == ended_before[k] for k in done_before | collectable)
    assert all(ended[k] - ended_before[k] <= 1 for k in ended)
    assert all(ended_before[k] == 1 for k in done_before)  # the finished ones were not run again
    left = sorted(
        str(f.relative_to(store.path.parent)) for f in (store.path.parent / "kill").rglob("jobs/*/*")
    )
    assert left == []  # work folders are removed once their job is recorded
    return summary


def test_local_driver_killed_and_restarted(worker_env: None, tmp_path: Path) -> None:
    cfg = ExecutorConfig()
    store, log, jobs = _kill_driver_mid_sweep(tmp_path, cfg)
    time.sleep(0.5)  # its workers die with it (parent-death signal)
    started, ended = _lines(log, "start"), _lines(log, "end")
    cut = {k for k in started if k not in ended} | _lost(store, log, jobs)
    summary = _finish_and_check(store, log, jobs, cfg)
    assert summary["attached"] == 0 and cut
    # the jobs cut short died with the driver and ran again; no other job started twice
    assert {k for k, n in _lines(log, "start").items() if n == 2} == cut


def test_submitit_driver_killed_and_restarted_reattaches(worker_env: None, tmp_path: Path) -> None:
    cfg = ExecutorConfig(name="submitit", cluster="local", parallel=2)
    store, log, jobs = _kill_driver_mid_sweep(tmp_path, cfg)
    summary = _finish_and_check(store, log, jobs, cfg)
    # the jobs the dead driver had submitted went on; the new driver followed them (or, if they ended
    # before it started, took their results from their work folders): nothing ran twice
    assert summary["attached"] + summary["collected"] >= 1
    assert max(_lines(log, "start").values()) == 1


def test_ray_driver_killed_and_restarted_reattaches(ray_cluster: str, tmp_path: Path) -> None:
    cfg = ExecutorConfig(name="ray", address=ray_cluster)
    store, log, jobs = _kill_driver_mid_sweep(tmp_path, cfg)
    summary = _finish_and_check(store, log, jobs, cfg)
    # detached actors outlive the driver that submitted them
    assert summary["attached"] + summary["collected"] >= 1
    assert max(_lines(log, "start").values()) == 1


# ----------------------------------------------------------------- a worker killed or preempted mid-job


def _one_job(tmp_path: Path, name: str) -> tuple[ResultStore, Job]:
    """magnitude + fine-tuning on real Fashion-MNIST: a dense fit, then a fine-tuning fit per target."""
    db = tmp_path / name / "results.sqlite"
    overrides = [f"db='{db}'", "optim.epochs=6", "data.train_subset=10000", "methods.magnitude-ft.grid=[]"]
    cfg = load_sweep_config(MAIN, overrides, quick=True)
    [job] = [j for j in expand(cfg) if j.method == "magnitude-ft"]
    return ResultStore(db), job


def _worker_of(controller: int) -> int:
    """The pid of the process running the job under submitit's local controller ``controller``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == controller:
            return int(stat.parent.name)
    raise AssertionError(f"no worker under submitit's controller {controller}")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGUSR2], ids=["killed", "preempted"])
def test_a_submitit_worker_cut_short_resumes_bit_identical(
    real_fmnist: Path, worker_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    """SIGKILL: the worker is lost, the driver submits the job again. SIGUSR2 (SLURM's preemption and
    time-limit warning): submitit checkpoints and requeues it itself. Either way it resumes."""
    log = tmp_path / "epochs.log"
    monkeypatch.setenv("HALOPRUNE_TEST_EPOCH_LOG", str(log))
    ref_store, ref_job = _one_job(tmp_path, "reference")
    one_thread = ExecutorConfig(cpus_per_job=1)  # as each submitit job has: the same sums in the same order
    assert run_sweep([ref_job], epoch_logged_job, ref_store, progress=False, executor=one_thread)["done"] == 1
    uninterrupted = [line.split(maxsplit=2)[2] for line in log.read_text().splitlines()]
    log.unlink()

    store, job = _one_job(tmp_path, "cut")
    checkpoint = SweepPaths(store.path, job.sweep).work(job.key) / "checkpoints" / "fit0.pt.sha256"

    def cut_short() -> None:
        _wait_for(checkpoint.exists, None, "the job's first complete checkpoint")
        with ResultStore(store.path) as own:  # a connection of this thread's
            controller = int(own.run(job.key)["handle"])
        os.kill(_worker_of(controller), signum)

    killer = threading.Thread(target=cut_short)
    killer.start()
    cfg = ExecutorConfig(name="submitit", cluster="local")
    summary = run_sweep([job], epoch_logged_job, store, progress=False, executor=cfg)
    killer.join()
    assert summary["done"] == 1 and summary["failed"] == []
    assert summary["retried"] == (1 if signum == signal.SIGKILL else 0)  # SIGUSR2: submitit requeued it

    # two processes trained it; the second started after the last checkpoint of the first, and together
    # they trained every epoch of the uninterrupted job exactly once
    lines = [line.split(maxsplit=2) for line in log.read_text().splitlines()]
    pids = list(dict.fromkeys(pid for _, pid, _ in lines))
    assert len(pids) == 2
    trained = [what for _, _, what in lines]
    first = [what for _, pid, what in lines if pid == pids[0]]
    assert trained[: len(first)] == first and len(set(trained)) == len(trained)
    assert sorted(trained) == sorted(uninterrupted)

    ref, cut = ref_store.records(), store.records()
    assert [r["sparsity"] for r in ref] == [r["sparsity"] for r in cut] == [0.9, 0.98]
    for a, b in zip(ref, cut, strict=True):
        for column in ("accuracy", "val_accuracy", "achieved_sparsity", "epochs_used"):
            assert a[column] == b[column]
    state_a = load_torch(SweepPaths(ref_store.path, ref_job.sweep).state(ref_job.key))["model"]
    state_b = load_torch(SweepPaths(store.path, job.sweep).state(job.key))["model"]
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


# ------------------------------------------------------------------------------ --status, bad settings


def test_status_of_a_sweep_whose_driver_is_not_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    submitit = ["--set", "executor.name='submitit'", "--set", "executor.cluster='local'"]
    assert main(["sweep", str(MAIN), "--quick", "--status", *submitit]) == 2
    assert "has not started" in capsys.readouterr().err
    cfg = load_sweep_config(MAIN, quick=True)
    done, lost, failed, *_ = jobs = expand(cfg)
    with ResultStore(cfg.db) as store:
        for job in (done, lost, failed):
            assert store.claim(job)
        store.finish(done.key, [{"sparsity": done.sparsity or 0.9, "accuracy": 50.0}], 2, 1.0)
        store.fail(failed.key, "boom")
        store.set_handle(lost.key, "submitit", "999999999")  # a local controller that no longer exists
        assert main(["sweep", str(MAIN), "--quick", "--status", *submitit]) == 0
        first = capsys.readouterr().out.splitlines()
        # the driver that claimed them (this process) is alive ...
        assert f"driver running ({os.getpid()}@" in first[0]
        store.conn.execute("UPDATE runs SET pid = 999999999 WHERE status = 'running'")  # ... now it is not
    assert main(["sweep", str(MAIN), "--quick", "--status", *submitit]) == 0
    out = capsys.readouterr().out.splitlines()
    queued = len(jobs) - 3
    assert out[0] == (
        f"sweep main-quick: {len(jobs)} jobs, queued {queued}, running 1, done 1, failed 1; "
        "driver not running; executor submitit"
    )
    assert out[1] == f"  running {lost.key} ({lost.method}): handle 999999999, gone"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "executor.name='ray'", "--set", "executor.partition='gpu'"],
            "executor.partition is a setting of the submitit executor, not of 'ray'",
        ),
        (
            ["--executor", "ray", "--set", "executor.address='auto'", "--set", "executor.num_cpus=2"],
            "not both",
        ),
        (["--set", "executor.adress='auto'"], "executor.adress: unknown key"),
        (["--set", "executor.name='slurm'"], "executor.name"),
        (["--jobs", "0"], "--jobs must be >= 1"),
        (
            [
                "--executor",
                "submitit",
                "--set",
                "executor.cluster='local'",
                "--set",
                "executor.slurm={acount=1}",
            ],
            "submitit refused a setting: Unknown argument 'acount' for executor 'slurm'",
        ),
    ],
)
def test_bad_executor_settings_are_one_line_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(MAIN), "--quick", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("haloprune: error:") and message in err and err.count("\n") == 1, err
    assert not list(Path().glob("runs/*/jobs/*"))  # no job started


def test_executor_flag_sets_aside_another_executors_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SLURM sweep's config tried on this machine: --executor local sets its SLURM settings aside."""
    config = tmp_path / "slurm.toml"
    config.write_text(
        MAIN.read_text() + '\n[executor]\nname = "submitit"\npartition = "gpu"\nmax_retries = 5\n'
    )
    config.write_text(config.read_text() + '\n[logging]\nbackend = "tensorboard"\n')
    cfg = load_sweep_config(config, quick=True)
    assert cfg.executor.partition == "gpu"  # --quick keeps [executor] and [logging] (it lost [logging])
    assert cfg.logging.backend == "tensorboard" and cfg.name == "main-quick"
    local = _with_executor(cfg, "local")
    assert local.executor == ExecutorConfig(name="local", max_retries=5)
    assert capsys.readouterr().err == "note: --executor local sets aside executor.partition\n"
    assert [j.key for j in expand(local)] == [j.key for j in expand(cfg)]  # never part of a job's key
    # --executor submitit with a --set of its own settings on a config written for the local executor
    tried = load_sweep_config(MAIN, ["executor.cluster='local'"], quick=True)
    assert _with_executor(tried, "submitit").executor == ExecutorConfig(name="submitit", cluster="local")
    with pytest.raises(HaloPruneError, match=r"executor\.cluster is a setting of the submitit executor"):
        _with_executor(tried, None)


# ---------------------------------------------------------------------- one job submitted twice


def test_a_second_worker_on_a_job_waits_and_hands_back_the_first_ones_result(tmp_path: Path) -> None:
    """A driver that died between submitting a job and keeping its handle: the next one may submit it
    again. The second worker waits for the first and returns its result; the job runs once."""
    log = tmp_path / "jobs.log"
    [job] = _jobs(log, 1.0)[:1]
    folder = tmp_path / "work"
    outcomes: list[Any] = []
    workers = [
        threading.Thread(target=lambda: outcomes.append(JobTask(job, logged_job, 1, folder)()))
        for _ in range(2)
    ]
    for w in workers:
        w.start()
        time.sleep(0.2)
    for w in workers:
        w.join()
    assert outcomes[0] == outcomes[1] and isinstance(outcomes[0], JobResult)
    assert _lines(log, "start")[job.key] == 1
    # once the driver has recorded it (and removed its folder), a late worker leaves no trace
    holder = JobTask(job, logged_job, 1, tmp_path / "work2")
    late: list[Any] = []
    (tmp_path / "work2").mkdir()
    with (tmp_path / "work2" / "lock").open("a") as fh:  # the first worker, still at it
        fcntl.flock(fh, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: late.append(holder()))
        waiter.start()
        time.sleep(0.3)
        shutil.rmtree(tmp_path / "work2")  # recorded meanwhile
        fcntl.flock(fh, fcntl.LOCK_UN)
    waiter.join()
    assert isinstance(late[0], JobError) and "recorded" in late[0].error
    assert not (tmp_path / "work2").exists() and _lines(log, "start")[job.key] == 1


def test_submitit_finds_a_submission_whose_handle_was_never_kept(worker_env: None, tmp_path: Path) -> None:
    cfg = ExecutorConfig(name="submitit", cluster="local")
    log = tmp_path / "jobs.log"
    [job] = _jobs(log, 0.0)[:1]
    task = JobTask(job, logged_job, 1, tmp_path / "work")
    paths = SweepPaths(tmp_path / "results.sqlite", "sweep")
    first = SubmititExecutor(cfg, paths=paths)
    handle = first.submit(task)  # ... and the driver dies before the store has the handle
    second = SubmititExecutor(cfg, paths=paths)
    assert second.attach(job, None) == handle
    deadline = time.monotonic() + 60
    finished: list[Any] = []
    while not finished and time.monotonic() < deadline:
        finished = second.poll(timeout=1.0)
    assert [(h, type(o)) for h, o in finished] == [(handle, JobResult)]
    assert second.attach(_jobs(log, 0.0)[1], None) is None  # never submitted
