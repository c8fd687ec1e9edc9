"""The byte-level text corpus (haloprune.data.text, ``torch-source``): built deterministically and checked
against its spec's sha256, cut into contiguous, disjoint parts and windows of bytes; what its settings
mean and refuse; the network a config builds for it."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import pytest
import torch

from haloprune.build import build_network
from haloprune.cli import main
from haloprune.config import TrainConfig, load_config
from haloprune.core.errors import ConfigError, DataError
from haloprune.data import load_dataset
from haloprune.data.datasets import DATASETS, DatasetSpec
from haloprune.data.text import ByteCorpus, build_corpus, corpus_bytes, package_root

SPEC = DATASETS["torch-source"]
TINY = "haloprune_tiny_corpus"  # a package written by the tests, whose sources are a corpus


def tiny_package(root: Path, monkeypatch: pytest.MonkeyPatch, n: int = 2000) -> tuple[Path, DatasetSpec]:
    """An importable package of a few Python files (about ``n`` bytes in all) and the spec of its corpus,
    with its digest."""
    folder = root / TINY
    (folder / "sub").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    filler = bytes(torch.randint(32, 127, (n,), generator=g).tolist())  # printable bytes, no pattern
    for name, body in (
        ("z.py", filler[: n // 2]),
        ("sub/y.py", b"y = 1\n"),
        ("__init__.py", b""),
        ("a.py", filler[n // 2 :]),
        ("notes.txt", b"not a source file"),
    ):
        (folder / name).write_bytes(body)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, TINY, raising=False)
    digest = hashlib.sha256(build_corpus(folder)).hexdigest()
    corpus = ByteCorpus(package=TINY, version="1", sha256=digest, context=9)
    return folder, DatasetSpec(name=TINY, files={}, payload_sha256={}, num_classes=256, corpus=corpus)


def test_the_corpus_is_the_sorted_sources_each_after_a_line_naming_it(tmp_path: Path) -> None:
    for name, body in (
        ("b.py", b"print(2)"),
        ("a/z.py", b"z = 1\n"),
        ("A.py", b"x\n"),
        ("a/__init__.py", b""),
    ):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(body)
    (tmp_path / "a" / "data.txt").write_bytes(b"ignored")
    expected = (
        b"# ==> A.py <==\nx\n# ==> a/__init__.py <==\n# ==> a/z.py <==\nz = 1\n# ==> b.py <==\nprint(2)\n"
    )
    assert build_corpus(tmp_path) == expected


def test_torch_source_is_deterministic_cached_and_has_its_recorded_digest() -> None:
    assert SPEC.corpus is not None and SPEC.corpus.version == torch.__version__.split("+")[0]
    data, digest = corpus_bytes(SPEC.corpus, SPEC.name)
    assert digest == SPEC.corpus.sha256 and len(data) == 46_546_051
    assert corpus_bytes(SPEC.corpus, SPEC.name)[0] is data  # built once per process
    rebuilt = build_corpus(package_root("torch"))
    assert hashlib.sha256(rebuilt).hexdigest() == digest
    assert rebuilt.startswith(b"# ==> _VF.py <==\n")
    split = load_dataset("torch-source", val_size=4, train_subset=4, test_subset=4)
    assert split.sha256 == digest and split.x_train.dtype == torch.int64


def test_a_corpus_with_another_digest_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another torch version builds another corpus: its numbers would not compare, so it is refused,
    naming both digests (exit 2 from the CLI)."""
    assert SPEC.corpus is not None
    other = dataclasses.replace(SPEC, corpus=dataclasses.replace(SPEC.corpus, sha256="0" * 64))
    with pytest.raises(DataError) as err:
        load_dataset("torch-source", specs={"torch-source": other}, val_size=4, train_subset=4, test_subset=4)
    message = str(err.value)
    assert SPEC.corpus.sha256 in message and "0" * 64 in message and "\n" not in message
    assert "torch==2.13.0" in message
    monkeypatch.setitem(DATASETS, "torch-source", other)
    assert main(["data", "check", "torch-source"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("haloprune: error: the torch-source corpus") and SPEC.corpus.sha256 in line


def test_parts_are_contiguous_and_disjoint_windows_of_context_plus_one_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, spec = tiny_package(tmp_path, monkeypatch)
    corpus = torch.tensor(list(build_corpus(folder)))
    n, c = len(corpus), 9
    a = round(0.9 * n)
    b = a + round(0.05 * n)
    sizes = {"train": a // (c + 1), "val": (b - a) // (c + 1), "test": (n - b) // (c + 1)}
    split = load_dataset(TINY, specs={TINY: spec}, val_size=sizes["val"])  # every window of every part
    for part, start in (("train", 0), ("val", a), ("test", b)):
        x, y = getattr(split, f"x_{part}"), getattr(split, f"y_{part}")
        assert x.shape == y.shape == (sizes[part], c)
        assert torch.equal(y[:, :-1], x[:, 1:])  # the targets: the next byte at each position
        windows = torch.cat([x, y[:, -1:]], dim=1).flatten()  # back to the bytes they were cut from
        assert torch.equal(windows, corpus[start : start + sizes[part] * (c + 1)])
    assert sizes["train"] * (c + 1) <= a and a + sizes["val"] * (c + 1) <= b  # no byte in two parts
    # the real corpus: its validation and test parts start where the fractions say
    data, _ = corpus_bytes(SPEC.corpus, SPEC.name)
    torch_split = load_dataset("torch-source", context=16, val_size=3, train_subset=3, test_subset=3)
    m = len(data)
    a = round(0.9 * m)
    assert torch.equal(torch_split.x_val[0], data[a : a + 16].long())
    assert torch.equal(torch_split.x_test[0], data[a + round(0.05 * m) :][:16].long())


def test_subsets_count_windows_seeded_for_training_the_same_for_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, spec = tiny_package(tmp_path, monkeypatch, n=4000)
    n = len(build_corpus(folder))
    n_train, n_val = round(0.9 * n) // 10, round(0.05 * n) // 10  # windows of 9 + 1 bytes
    specs = {TINY: spec}

    def load(seed: int, **kw: int | None):
        return load_dataset(TINY, specs=specs, seed=seed, **{"val_size": 5, "train_subset": 50, **kw})

    s0, s0_again, s1 = load(0), load(0), load(1)
    assert torch.equal(s0.train_indices, s0_again.train_indices) and torch.equal(s0.x_train, s0_again.x_train)
    assert not torch.equal(s0.train_indices, s1.train_indices)
    assert torch.equal(s0.x_val, s1.x_val) and torch.equal(s0.x_test, s1.x_test)  # the same for every seed
    assert len(s0.y_train) == 50 and len(s0.y_val) == 5
    assert torch.equal(s0.val_indices, torch.arange(5) * n_val // 5)  # spread over the validation part
    assert len(load(0, test_subset=3).y_test) == 3
    full = load(0, train_subset=None)
    assert len(full.y_train) == n_train and torch.equal(full.x_train[s0.train_indices], s0.x_train)
    for kw, match in (
        (
            {"val_size": n_val + 1},
            rf"val_size={n_val + 1} is out of range: .* has {n_val} windows .*0\.\.{n_val}$",
        ),
        (
            {"train_subset": n_train + 1},
            rf"train_subset={n_train + 1} is out of range: .* has {n_train} windows",
        ),
        ({"test_subset": 0}, r"test_subset=0 is out of range"),
        ({"context": 0}, r"context=0 is out of range"),
    ):
        with pytest.raises(DataError, match=match):
            load(0, **kw)


def test_settings_that_do_not_apply_and_the_network_a_config_builds() -> None:
    """Image settings on text and the window length on images are refused, as is a network that cannot
    take the data; the GPT's positions are the data's context, one setting."""
    with pytest.raises(DataError, match="pad_to is an image setting; torch-source is a text corpus"):
        load_dataset("torch-source", pad_to=32)
    with pytest.raises(DataError, match="context is the window length of a text corpus; fashion-mnist"):
        load_dataset("fashion-mnist", context=64)
    text = ['data.name="torch-source"', 'model.name="gpt"', "model.dim=32", "model.heads=2", "model.depth=1"]
    for extra, match in (
        (
            ['data.name="fashion-mnist"', "data.context=64"],
            "data: context is the window length of a text corpus",
        ),
        ([*text, 'data.normalize="none"'], "normalize is an image setting"),
        ([*text, "data.augment=true"], "augment is an image setting"),
        ([*text, 'data.dir="/data"'], "torch-source is built from the installed torch, not read"),
        ([*text, "model.context=64"], r"model\.context: unknown key"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_config(TrainConfig, None, extra)
    for extra, match in (
        (
            ['data.name="torch-source"'],
            r"lenet-300-100 cannot take torch-source \(a text corpus\): it has no",
        ),
        (['model.name="gpt"'], r"gpt cannot take fashion-mnist \(images\): it has no in_channels"),
    ):
        with pytest.raises(ConfigError, match=match):
            build_network(load_config(TrainConfig, None, extra))
    for context in (None, 32):
        cfg = load_config(TrainConfig, None, text + ([f"data.context={context}"] if context else []))
        gpt = build_network(cfg)
        assert gpt.context == cfg.data.context_length == (context or 128)
        assert gpt.tok_emb.num_embeddings == 256 and gpt.pos_emb.num_embeddings == gpt.context
