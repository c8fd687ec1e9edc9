"""Faults: exact resume after SIGKILL, verified checkpoints, never losing a run, untrusted files.

Where each guarantee of the README's reliability list is tested:
1. exact resume after SIGKILL — here (training); a killed sweep — tests/test_sweep_store.py
2. atomic, checksummed checkpoints with fallback — here
3. NaN/inf stops with the step named, exit 2 — here; λ positive under any step — tests/test_penalties.py,
   tests/test_penalty_family.py, tests/test_fused.py
4. fuzzed configs — here; damaged data files — tests/test_data.py, tests/test_config_cli.py
5. masks and λ through state_dict / deepcopy / pickle / compile / training — tests/test_pruning.py,
   tests/test_penalties.py, tests/test_fused.py
6. bit-identical reruns — tests/test_train.py; seeds in every record — tests/test_sweep_e2e.py
7. unwritable run directory fails before training — here
8. crafted pickle, crafted tar, archive checksums — here
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from haloprune.cli import main
from haloprune.core.errors import HaloPruneError
from haloprune.core.io import load_torch, load_verified, save_verified

RUN_ARGS = [
    "--set",
    "penalty.name=halo",
    "--set",
    "penalty.xi=1e-7",
    "--set",
    "penalty.psi=1e-3",
    "--set",
    "data.train_subset=20000",
    "--set",
    "data.val_size=1000",
    "--set",
    "data.test_subset=1000",
    "--epochs",
    "4",
    "--quiet",
]


def _train_cmd(out: Path, name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "haloprune",
        "train",
        "--name",
        name,
        "--set",
        f"out_dir='{out}'",
        *RUN_ARGS,
    ]


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path: Path, real_fmnist: Path) -> None:
    subprocess.run(_train_cmd(tmp_path, "straight"), check=True, capture_output=True, timeout=600)

    victim = subprocess.Popen(
        _train_cmd(tmp_path, "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert victim.poll() is None, "the run ended before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)  # mid-epoch 3 (or right after epoch 2's metrics line)
    victim.wait()
    assert not (tmp_path / "killed" / "model.pt").exists()

    # Starting it again without --resume must not throw the progress away.
    again = subprocess.run(_train_cmd(tmp_path, "killed"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = subprocess.run(
        [sys.executable, "-m", "haloprune", "train", "--resume", str(tmp_path / "killed"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr

    a = load_torch(tmp_path / "straight" / "model.pt")
    b = load_torch(tmp_path / "killed" / "model.pt")
    for part in ("model", "penalty"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            if isinstance(a[part][k], torch.Tensor):
                assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    ca, cb = (
        load_verified(tmp_path / "straight" / "checkpoint.pt"),
        load_verified(tmp_path / "killed" / "checkpoint.pt"),
    )
    assert ca["step"] == cb["step"] and torch.equal(ca["generator"], cb["generator"])
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    lines_a = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines_a) == len(lines_b) == 4


def test_verified_checkpoints_fall_back_and_refuse_damage(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_verified({"epoch": 1, "w": torch.ones(3)}, path)
    save_verified({"epoch": 2, "w": torch.full((3,), 2.0)}, path)
    assert load_verified(path)["epoch"] == 2
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.warns(RuntimeWarning, match="using checkpoint.prev.pt"):
        assert load_verified(path)["epoch"] == 1
    prev = tmp_path / "checkpoint.prev.pt"
    data = bytearray(prev.read_bytes())
    data[-20] ^= 0xFF  # altered
    prev.write_bytes(bytes(data))
    with pytest.raises(HaloPruneError, match="no usable checkpoint") as err:
        load_verified(path)
    assert "sha256" in str(err.value) and "\n" not in str(err.value)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_crafted_pickle_in_a_run_directory_cannot_execute(tmp_path: Path) -> None:
    _Evil.marker = str(tmp_path / "pwned")
    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps({"model": _Evil()}, protocol=2))
    with pytest.raises(HaloPruneError, match="not a readable haloprune checkpoint"):
        load_torch(evil)
    (tmp_path / "checkpoint.pt").write_bytes(evil.read_bytes())
    (tmp_path / "checkpoint.pt.sha256").write_text(hashlib.sha256(evil.read_bytes()).hexdigest())
    with pytest.raises(HaloPruneError, match="not a readable checkpoint"):
        load_verified(tmp_path / "checkpoint.pt")
    assert not (tmp_path / "pwned").exists()


def test_unwritable_run_directory_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    t0 = time.perf_counter()
    code = main(["train", "--set", f"out_dir='{blocker / 'runs'}'", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write the run directory" in err and err.count("\n") == 1
    assert time.perf_counter() - t0 < 5


def test_resume_needs_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--resume", str(tmp_path / "nothing")])
    assert (code == 2 and "nothing to resume" in capsys.readouterr().err) or code == 2


def test_divergence_stops_with_the_step_and_exit_2(
    tmp_path: Path, real_fmnist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            "--name",
            "boom",
            "--set",
            f"out_dir='{tmp_path}'",
            "--set",
            "optim.lr=1e12",
            "--set",
            "optim.schedule='constant'",
            "--set",
            "data.train_subset=6000",
            "--set",
            "data.val_size=500",
            "--epochs",
            "2",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "loss became" in err and "at step" in err and err.count("\n") == 1
    assert not (tmp_path / "boom" / "model.pt").exists()


_KEYS = [
    "name",
    "seed",
    "optim.epochs",
    "optim.lr",
    "optim.momentum",
    "optim.schedule",
    "penalty.name",
    "penalty.xi",
    "penalty.psi",
    "penalty.form",
    "prune.sparsities",
    "data.val_size",
    "model.name",
    "bogus",
    "optim.bogus",
    "penalty",
]
_VALUES = [
    "0",
    "-1",
    "1e-3",
    "1.5",
    "'x'",
    "true",
    "[]",
    "[0.5, 1.0]",
    "[-0.1]",
    "{a=1}",
    "'halo'",
    "'l2'",
    "nan",
    "inf",
    "99999999999999999999",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_KEYS), st.sampled_from(_VALUES)), max_size=4))
def test_fuzzed_configs_are_valid_or_one_clear_config_error(pairs: list[tuple[str, str]]) -> None:
    from haloprune.config import TrainConfig, load_config
    from haloprune.core.errors import ConfigError

    try:
        load_config(TrainConfig, None, [f"{k}={v}" for k, v in pairs])
    except ConfigError as err:
        assert "\n" not in str(err) and str(err)


def _tar_with(path: Path, name: str, data: bytes = b"x", link: str | None = None) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        if link is not None:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(("name", "link"), [("../escape.txt", None), ("evil-link", "/etc/passwd")])
def test_crafted_tar_cannot_write_outside_the_target(tmp_path: Path, name: str, link: str | None) -> None:
    from haloprune.core.errors import DataError
    from haloprune.data.archive import safe_extract

    dest = tmp_path / "out" / "inner"
    archive = _tar_with(tmp_path / "evil.tar.gz", name, link=link)
    with pytest.raises(DataError, match="outside"):
        safe_extract(archive, dest, None)
    assert not (tmp_path / "out" / "escape.txt").exists()
    assert not (dest / "evil-link").exists()


def test_absolute_member_names_stay_inside_the_target(tmp_path: Path) -> None:
    from haloprune.data.archive import safe_extract

    name = f"{tmp_path}/outside.txt"  # absolute: the filter strips the leading "/" and keeps it inside
    safe_extract(_tar_with(tmp_path / "abs.tar.gz", name), tmp_path / "dest", None)
    assert not (tmp_path / "outside.txt").exists()
    assert (tmp_path / "dest" / name.lstrip("/")).exists()


def test_archive_checksum_is_verified_before_extraction(tmp_path: Path) -> None:
    from haloprune.core.errors import DataError
    from haloprune.data.archive import safe_extract, sha256_file

    archive = _tar_with(tmp_path / "good.tar.gz", "data_batch_1", b"payload")
    with pytest.raises(DataError, match="does not match"):
        safe_extract(archive, tmp_path / "x", "0" * 64)
    assert not (tmp_path / "x").exists()
    out = safe_extract(archive, tmp_path / "y", sha256_file(archive))
    assert (out / "data_batch_1").read_bytes() == b"payload"
