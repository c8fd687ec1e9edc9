"""Export of pruned models: compact safetensors (bit-exact round trip, small files), slimmed ONNX (onnxruntime
agrees with torch), dense checkpoints that transformers loads and compressed-tensors reads, the CLI, clear
errors."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

import haloprune
from haloprune import build_model, global_magnitude_prune, save_sparse
from haloprune.core.errors import HaloPruneError
from haloprune.pruning.masks import get_masks
from tests.helpers import umask

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5", "vgg16-bn"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98, 0.999])
def test_round_trip_is_bit_exact(tmp_path: Path, name: str, sparsity: float) -> None:
    kwargs = {"width": 0.125} if name == "vgg16-bn" else {}
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    if name == "vgg16-bn":  # non-trivial BatchNorm statistics must survive too
        model.train()
        model(torch.randn(8, 1, 28, 28))
    global_magnitude_prune(model, sparsity)
    path = save_sparse(model, tmp_path / "m.safetensors", architecture={"name": name, "kwargs": kwargs})
    loaded = haloprune.load(path)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    assert get_masks(loaded).keys() == get_masks(model).keys()
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), loaded(x))


def test_a_gpt_with_its_head_tied_to_its_embedding_round_trips_and_slims(tmp_path: Path) -> None:
    """The tied table is stored under both its names (safetensors keeps no shared memory) and loads back
    into the one parameter; the GPT traces for slimming (no fallback warning)."""
    kwargs = {"context": 8, "dim": 16, "depth": 1, "heads": 2}
    torch.manual_seed(0)
    model = build_model("gpt", **kwargs)
    global_magnitude_prune(model, 0.9)
    path = save_sparse(model, tmp_path / "m.safetensors", architecture={"name": "gpt", "kwargs": kwargs})
    loaded = haloprune.load(path)
    assert loaded.head.weight is loaded.tok_emb.weight
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    x = torch.randint(0, 256, (2, 8))
    assert torch.equal(model.eval()(x), loaded(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        slim = haloprune.slim(loaded, x)
    assert torch.allclose(slim(x), loaded(x), atol=1e-5)


def test_98_percent_lenet300_file_is_under_5_percent_of_dense(tmp_path: Path) -> None:
    model = build_model("lenet-300-100")
    global_magnitude_prune(model, 0.98)
    path = save_sparse(model, tmp_path / "m.safetensors", architecture={"name": "lenet-300-100"})
    dense = sum(p.numel() * 4 for p in model.parameters())
    assert path.stat().st_size < 0.05 * dense
    meta = haloprune.export.read_metadata(path)
    assert meta["format"] == "haloprune-sparse/1" and float(meta["sparsity"]) == pytest.approx(0.98, abs=1e-4)


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(HaloPruneError, match="does not exist"):
        haloprune.load(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(HaloPruneError, match="not a haloprune export"):
        haloprune.load(junk)


# ---------------------------------------------------------------------------------------------- ONNX


ONNX_MODELS = {  # name: (kwargs, one input's shape)
    "lenet-300-100": ({}, (1, 28, 28)),
    "lenet-5": ({}, (1, 28, 28)),
    "vgg16-bn": ({"width": 0.125}, (1, 28, 28)),
    "resnet18": ({"width": 0.125}, (3, 32, 32)),
}


@pytest.mark.parametrize(
    ("name", "structured"),
    [
        ("lenet-300-100", False),
        ("lenet-5", True),
        ("resnet18", True),
        pytest.param("lenet-300-100", True, marks=pytest.mark.slow),
        pytest.param("lenet-5", False, marks=pytest.mark.slow),
        pytest.param("vgg16-bn", False, marks=pytest.mark.slow),
        pytest.param("vgg16-bn", True, marks=pytest.mark.slow),
        pytest.param("resnet18", False, marks=pytest.mark.slow),
    ],
)
def test_onnx_export_of_the_slimmed_model_matches_torch(tmp_path: Path, name: str, structured: bool) -> None:
    ort = pytest.importorskip("onnxruntime")
    kwargs, shape = ONNX_MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, **kwargs, in_channels=shape[0], image_size=shape[1])
    model.train()
    with torch.no_grad():
        model(torch.randn(16, *shape))  # BatchNorm statistics
    model.eval()
    x1 = torch.zeros(1, *shape)
    if structured:
        haloprune.group_prune(model, x1, params=haloprune.count_cost(model, x1).params // 5)
    else:
        global_magnitude_prune(model, 0.9)
    path = haloprune.export.export_onnx(model, tmp_path / "m.onnx", x1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # the batch dimension is dynamic
        x = torch.randn(batch, *shape)
        (out,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
        assert out.shape == expected.shape
        assert abs(out - expected).max() <= 1e-5


def _finished_run(tmp_path: Path, name: str = "lenet-300-100") -> Path:
    """A run directory as `haloprune train` leaves it (random weights: no training needed here)."""
    from haloprune.build import build
    from haloprune.config import TrainConfig, to_toml
    from haloprune.core.io import save_text, save_torch

    cfg = TrainConfig.model_validate({"name": "run", "out_dir": str(tmp_path), "model": {"name": name}})
    model, _ = build(cfg)
    cfg.run_dir.mkdir(parents=True)
    save_text(to_toml(cfg), cfg.run_dir / "config.toml")
    save_torch({"model": model.state_dict(), "penalty": None, "epoch": 1}, cfg.run_dir / "model.pt")
    return cfg.run_dir


@pytest.mark.parametrize("structured", [False, True])
def test_cli_exports_onnx_and_reports_sizes(
    tmp_path: Path, structured: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    ort = pytest.importorskip("onnxruntime")
    from haloprune.cli import main

    run = _finished_run(tmp_path)
    args = ["export", str(run), "--sparsity", "0.9", "--format", "onnx"]
    assert main(args + (["--structured"] if structured else [])) == 0
    out = capsys.readouterr().out
    path = run / "model-0.9.onnx"
    assert str(path) in out and "slimmed (dense layers)" in out and "MACs per input" in out
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": torch.zeros(2, 1, 28, 28).numpy()})
    assert logits.shape == (2, 10)
    if structured:  # 10% of the 266,200 weights, counted on the slimmed model
        small = int(out.split("slimmed (dense layers)")[1].split("weights")[0].replace(",", ""))
        assert small <= 26_620


# ------------------------------------------------------- dense checkpoints: transformers, compressed-tensors


def _hf_model(name: str) -> tuple[torch.nn.Module, type]:
    """A small transformers model built from a config (no download; tests/integrations/hf_tiny.py) and
    its Auto class."""
    transformers = pytest.importorskip("transformers")
    from tests.integrations.hf_tiny import build

    auto = {"gpt2": "AutoModelForCausalLM", "llama": "AutoModelForCausalLM"}
    return build(name), getattr(transformers, auto.get(name, "AutoModelForSequenceClassification"))


def _from_pretrained(auto: type, folder: Path) -> tuple[torch.nn.Module, str]:
    """``auto.from_pretrained(folder)`` and everything it warned: transformers' logger at warning level
    (its load report of unused / newly initialized weights) and Python warnings."""
    import io
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    hf_logging.add_handler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = auto.from_pretrained(folder)
    finally:
        hf_logging.remove_handler(handler)
        hf_logging.set_verbosity(before)
    return model.eval(), stream.getvalue() + "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _check_compressed_tensors_reads(folder: Path, model: torch.nn.Module) -> None:
    """compressed-tensors takes the config as transformers hands it over, and its sparsity config is a
    dense one recording what was pruned (read as the library and vLLM read it)."""
    import json

    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import (
        CompressionFormat,
        DenseSparsityConfig,
        SparsityCompressionConfig,
        SparsityStructure,
    )
    from transformers import CompressedTensorsConfig

    config = json.loads((folder / "config.json").read_text())
    block = config["quantization_config"]
    assert block["quant_method"] == "compressed-tensors" and block["format"] == "dense"
    compressor = ModelCompressor.from_compression_config(CompressedTensorsConfig.from_dict(config))
    assert compressor.quantization_config is None  # nothing quantized: the weights load as they are
    raw = block["sparsity_config"]
    sparsity = SparsityCompressionConfig.load_from_registry(raw["format"], **raw)
    assert isinstance(sparsity, DenseSparsityConfig) and sparsity.format == CompressionFormat.dense.value
    assert SparsityCompressionConfig.model_validate(raw).model_dump() == sparsity.model_dump()  # as vLLM
    masks = get_masks(model)
    pruned = sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert sparsity.global_sparsity == pytest.approx(pruned, abs=1e-12)
    assert SparsityStructure(sparsity.sparsity_structure) == SparsityStructure.UNSTRUCTURED
    assert set(sparsity.targets) == {name.rpartition(".")[0] for name in masks} and sparsity.ignore == []


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_save_pretrained_loads_back_in_transformers_equal_with_no_warnings(tmp_path: Path, name: str) -> None:
    from haloprune.pruning.masks import without_masks

    model, auto = _hf_model(name)
    model.eval()
    global_magnitude_prune(model, 0.9)
    masks = {k: v.clone() for k, v in get_masks(model).items()}
    folder = haloprune.export.save_pretrained(model, tmp_path / "hf")
    assert "quantization_config" not in model.config.__dict__ and get_masks(model).keys() == masks.keys()

    loaded, warned = _from_pretrained(auto, folder)
    assert warned == ""  # no unused / missing weights, nothing else
    state, loaded_state = without_masks(model.state_dict()), loaded.state_dict()
    assert set(loaded_state) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded_state[key], value), key
    for key, mask in masks.items():  # the zeros are intact
        assert not loaded.get_parameter(key)[~mask].any(), key
    x = torch.randint(0, 100, (2, 16))
    assert torch.equal(_outputs(loaded, x), _outputs(model, x))
    _check_compressed_tensors_reads(folder, model)


def test_the_warning_capture_sees_an_unused_weight(tmp_path: Path) -> None:
    """The instrument of the test above: a checkpoint with a weight the model lacks is reported."""
    from safetensors.torch import load_file, save_file

    model, auto = _hf_model("llama")
    model.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    save_file({**load_file(path), "lm_head.weight_mask": torch.ones(3)}, path, metadata={"format": "pt"})
    assert "lm_head.weight_mask" in _from_pretrained(auto, tmp_path / "hf")[1]


def test_a_loaded_export_pruned_further_saves_again(tmp_path: Path) -> None:
    """A model loaded from such a folder (transformers attaches a compressed-tensors quantizer that
    quantizes nothing) can be pruned further and saved again; the new folder records the new sparsity."""
    import json

    model, auto = _hf_model("llama")
    global_magnitude_prune(model, 0.5)
    loaded, _ = _from_pretrained(auto, haloprune.export.save_pretrained(model, tmp_path / "a"))
    global_magnitude_prune(loaded, 0.8)
    folder = haloprune.export.save_pretrained(loaded, tmp_path / "b")
    again, warned = _from_pretrained(auto, folder)
    assert warned == ""
    x = torch.randint(0, 100, (2, 16))
    assert torch.equal(_outputs(again, x), _outputs(loaded, x))
    block = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert block["sparsity_config"]["global_sparsity"] == pytest.approx(0.8, abs=1e-4)


def test_save_pretrained_errors_are_one_line(tmp_path: Path) -> None:
    model = build_model("lenet-300-100")
    global_magnitude_prune(model, 0.5)
    with pytest.raises(HaloPruneError, match="needs a Hugging Face transformers model") as err:
        haloprune.export.save_pretrained(model, tmp_path / "x")
    assert "\n" not in str(err.value)
    hf, _ = _hf_model("llama")
    with pytest.raises(HaloPruneError, match="no masks are attached") as err:
        haloprune.export.save_pretrained(hf, tmp_path / "y")
    assert "\n" not in str(err.value)
    with pytest.raises(HaloPruneError, match="no masks are attached"):
        haloprune.export.save_compressed_tensors(build_model("lenet-5"), tmp_path / "z")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("name", "sparsity"), [("lenet-300-100", 0.98), ("lenet-5", 0.9), ("vit", 0.8)])
def test_compressed_tensors_export_is_the_dense_state_dict_with_the_sparsity_recorded(
    tmp_path: Path, name: str, sparsity: float
) -> None:
    from safetensors.torch import load_file

    model = build_model(name).eval()
    global_magnitude_prune(model, sparsity)
    folder = haloprune.export.save_compressed_tensors(model, tmp_path / "ct", config={"model": name})
    stored = load_file(folder / "model.safetensors")
    state = haloprune.pruning.masks.without_masks(model.state_dict())
    assert set(stored) == set(state)
    for key, value in state.items():
        assert torch.equal(stored[key], value), key
    fresh = build_model(name).eval()
    fresh.load_state_dict(stored)  # strict: the model's own layout, a model that never saw haloprune
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    _check_compressed_tensors_reads(folder, model)


def test_cli_exports_compressed_tensors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from safetensors.torch import load_file

    from haloprune.cli import main

    run = _finished_run(tmp_path)
    assert main(["export", str(run), "--sparsity", "0.95", "--format", "compressed-tensors"]) == 0
    folder = run / "model-0.95-compressed-tensors"
    assert str(folder) in capsys.readouterr().out
    _, model, _ = haloprune.training.run.load_trained(run)
    global_magnitude_prune(model, 0.95)
    stored = load_file(folder / "model.safetensors")
    for key, value in haloprune.pruning.masks.without_masks(model.state_dict()).items():
        assert torch.equal(stored[key], value), key
    config = json.loads((folder / "config.json").read_text())
    assert config["haloprune"]["architecture"]["name"] == "lenet-300-100"
    assert config["quantization_config"]["sparsity_config"]["global_sparsity"] == pytest.approx(
        0.95, abs=1e-4
    )
    _check_compressed_tensors_reads(folder, model)


def test_cli_export_without_onnx_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from haloprune.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnx" else real(n, *a))
    run = _finished_run(tmp_path)
    assert main(["export", str(run), "--sparsity", "0.9", "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'haloprune[onnx]'" in err
    assert not (run / "model-0.9.onnx").exists() and (run / "model.pt").exists()


def test_cli_export_rejects_bad_sparsity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from haloprune.cli import main

    run = _finished_run(tmp_path)
    assert main(["export", str(run), "--sparsity", "1.5", "--format", "onnx"]) == 2
    assert "--sparsity must be in [0, 1)" in capsys.readouterr().err


def _inference_benchmark():
    """benchmarks/inference.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "inference.py"
    spec = importlib.util.spec_from_file_location("inference_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_inference_benchmark_runners_match_the_slimmed_model(tmp_path: Path) -> None:
    """The benchmark's deployment forms compute what the model computes: onnxruntime with and without
    I/O binding (a result the caller owns, per batch size), CSR layers and torch.compile, under
    inference_mode as they are timed."""
    pytest.importorskip("onnxruntime")
    bench = _inference_benchmark()
    torch.manual_seed(0)
    model = build_model("lenet-300-100").eval()
    global_magnitude_prune(model, 0.98)
    x1 = torch.zeros(1, 1, 28, 28)
    small = haloprune.pruning.slim(model, x1)
    path = haloprune.export.export_onnx(model, tmp_path / "m.onnx", x1)
    runners = {
        "ort": bench.ort_runner(path),
        "ort-iob": bench.ort_runner(path, io_binding=True),
        "csr": bench.to_csr(model),
    }
    with torch.inference_mode():
        for batch in (1, 3, 1):
            x, y = torch.randn(batch, 1, 28, 28), torch.randn(batch, 1, 28, 28)
            for name, fn in runners.items():
                first = fn(x)
                fn(y)  # a later call must not overwrite an earlier result
                assert (first - small(x)).abs().max() <= 1e-5, name
    fn = bench.compiled(small, torch.randn(1, 1, 28, 28), torch.randn(2, 1, 28, 28))
    if fn is None:
        pytest.skip("torch.compile cannot compile here (no C++ compiler)")
    with torch.inference_mode():
        x = torch.randn(5, 1, 28, 28)
        assert (fn(x) - small(x)).abs().max() <= 1e-5


@pytest.mark.slow
def test_inference_benchmark_quick_ends_with_the_summary_line(tmp_path: Path, real_fmnist: Path) -> None:
    """benchmarks/inference.py --quick runs end to end on real data and ends with its one summary line."""
    import re
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "inference.py"
    args = ["--quick", "--models", "lenet-300-100", "--sparsities", "0.98", "--out-dir", str(tmp_path / "b")]
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HALOPRUNE_DATA": str(real_fmnist)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"size_ratio=\d+\.\d+ speedup_batch1=\d+\.\d+", last), last
    assert 0 < float(last.split()[0].split("=")[1]) < 1


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model("lenet-300-100")
    global_magnitude_prune(model, 0.5)
    arch = {"name": "lenet-300-100"}
    path = save_sparse(model, tmp_path / "m.safetensors", architecture=arch)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask()  # not mkstemp's 0600
    before = path.read_bytes()

    def broken(_: object, filename: str, **__: object) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(haloprune.pruning.storage, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_sparse(model, path, architecture=arch)
    monkeypatch.setattr(torch.onnx, "export", lambda _m, _a, f, **_: broken(None, f))
    with pytest.raises(OSError, match="disk full"):
        haloprune.export.export_onnx(model, tmp_path / "m.onnx", torch.zeros(1, 1, 28, 28))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
