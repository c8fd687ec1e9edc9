"""benchmarks/rerun_job.py: one job of a sweep run again with its epoch rows printed, an override making
another job, and nothing of the sweep's store or state files written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


@pytest.mark.usefixtures("real_fmnist")
def test_a_job_runs_again_with_its_rows_and_writes_nothing(tmp_path: Path) -> None:
    config = REPO / "configs" / "matrix" / "lenet300-adamw.toml"
    script = REPO / "benchmarks" / "rerun_job.py"
    common = [sys.executable, str(script), str(config), "halo", "0", "0.9", "--quick"]
    sets = ["--set", f"db='{tmp_path / 'store.sqlite'}'"]
    runs = []
    for extra in ([], ["--set", "methods.halo.params.penalty.max_shrink=1.0"]):
        done = subprocess.run(
            [*common, *sets, *extra], capture_output=True, text=True, timeout=600, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr[-2000:]
        lines = done.stdout.strip().splitlines()
        rows = [json.loads(line) for line in lines[1:-1]]
        assert lines[0].startswith("job ") and rows
        assert all("density" in r and "kept_abs_w" in r for r in rows)
        (record,) = json.loads(lines[-1])
        assert record["method"] == "halo" and record["sparsity"] == 0.9
        runs.append(lines[0])
    assert runs[0] != runs[1]  # the override is another job
    assert list(tmp_path.iterdir()) == []  # no store, no state files
