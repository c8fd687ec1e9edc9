"""What each sweep executor costs on this machine: the time it adds per job, and the quick sweep's wall time.

* **Per job**: ``--jobs-per-round`` jobs that do nothing (they return one record at once) through the
  driver on each executor, one job in flight at a time, so each job's cost is the executor's alone:
  submitting it, starting its worker (a spawned process, submitit's controller and its Python, a Ray
  actor), handing the result back, and the driver's claim / record in the store. Per-job time =
  round wall time / jobs, start-up of the executor (Ray's cluster) excluded and reported on its own.
* **Quick sweep**: ``haloprune sweep configs/main.toml --quick --quiet`` with ``--executor`` each of
  them, each in a fresh folder (nothing reused), as a user runs it (a new process, imports included).

Executors run in interleaved rounds (local, submitit, ray, local, ...); each figure is the median
[min–max] over ``--rounds`` rounds. Needs ``haloprune[submitit,ray]`` and Debian's dataset-fashion-mnist.

    python benchmarks/executors.py                 # 3 rounds, 8 jobs per round
    python benchmarks/executors.py --rounds 5 --skip-sweep
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from haloprune.experiments.config import ExecutorConfig
from haloprune.experiments.executors import build_executor
from haloprune.experiments.paths import SweepPaths
from haloprune.experiments.runner import Job, run_sweep
from haloprune.experiments.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
EXECUTORS = {  # label: (executor, its settings in both measurements)
    "local": ("local", {}),  # one job at a time: in the driver's process
    "local --jobs 2": ("local", {"parallel": 2}),  # a pool of two spawned worker processes
    "submitit": ("submitit", {"cluster": "local"}),
    "ray": ("ray", {"num_cpus": 2}),
}


def noop_job(
    job: Job, threads: int, checkpoints: Path | None = None, settings: Any = None
) -> tuple[list[dict[str, Any]], int]:
    return [{"sparsity": 0.9, "accuracy": 0.0}], 0


def _summary(values: list[float], digits: int = 2) -> str:
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"


def per_job(label: str, jobs: int, round_no: int, workdir: Path) -> tuple[float, float]:
    """(start-up seconds, seconds per job) of one round of ``jobs`` no-op jobs (one at a time, except
    for the pool: two)."""
    name, settings = EXECUTORS[label]
    cfg = ExecutorConfig(name=name, **{"parallel": 1, **settings})  # type: ignore[arg-type]
    db = workdir / f"{name}-{settings.get('parallel', 1)}-{round_no}" / "results.sqlite"
    batch = [Job(f"noop{round_no}", "noop", 0, None, {"i": i, "name": name}, {}) for i in range(jobs)]
    t0 = time.perf_counter()
    with ResultStore(db) as store:
        executor = build_executor(cfg, SweepPaths(db, batch[0].sweep))
        t1 = time.perf_counter()
        summary = run_sweep(batch, noop_job, store, progress=False, executor=executor, reuse=False)
    t2 = time.perf_counter()
    assert summary["done"] == jobs and not summary["failed"], summary
    return t1 - t0, (t2 - t1) / jobs


def quick_sweep(label: str, round_no: int, workdir: Path) -> float:
    name, settings = EXECUTORS[label]
    folder = workdir / f"sweep-{name}-{settings.get('parallel', 1)}-{round_no}"
    folder.mkdir()
    args = [sys.executable, "-m", "haloprune.cli", "sweep", str(ROOT / "configs" / "main.toml"), "--quick"]
    args += ["--quiet", "--set", f"executor.name='{name}'"]
    for key, value in settings.items():
        args += ["--set", f"executor.{key}={value!r}".replace("'", '"')]
    t0 = time.perf_counter()
    subprocess.run(args, cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs-per-round", type=int, default=8)
    parser.add_argument("--skip-sweep", action="store_true", help="only the per-job overhead")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster of this benchmark's own
    startup: dict[str, list[float]] = {n: [] for n in EXECUTORS}
    job_s: dict[str, list[float]] = {n: [] for n in EXECUTORS}
    sweep_s: dict[str, list[float]] = {n: [] for n in EXECUTORS}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for r in range(args.rounds):
            for name in EXECUTORS:
                s, j = per_job(name, args.jobs_per_round, r, workdir)
                startup[name].append(s)
                job_s[name].append(j)
                if not args.skip_sweep:
                    sweep_s[name].append(quick_sweep(name, r, workdir))
                print(f"round {r + 1}/{args.rounds} {name}: start-up {s:.2f} s, {j:.3f} s/job", flush=True)
    print(f"\ncpus: {os.cpu_count()}, rounds: {args.rounds}, no-op jobs per round: {args.jobs_per_round}")
    print("| executor | start-up (s) | added per job (s) | quick sweep wall (s) |")
    print("|---|---:|---:|---:|")
    for name in EXECUTORS:
        sweep = _summary(sweep_s[name]) if sweep_s[name] else "—"
        print(f"| {name} | {_summary(startup[name])} | {_summary(job_s[name], 3)} | {sweep} |")


if __name__ == "__main__":
    main()
