"""The smoke test of an installed wheel (``make wheel-test``): run by the interpreter of a fresh virtual
environment that has the wheel installed and not the checkout. Not a pytest module: it checks the
installation itself — where haloprune is imported from, what the wheel carries (py.typed, the shipped
configs), its metadata, the API on a tiny model and the ``haloprune`` command."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path


def main() -> None:
    import torch
    import torch.nn.functional as F

    import haloprune
    from haloprune import HALO, global_magnitude_prune, sparsity_report
    from haloprune.config import config_path

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    package = Path(haloprune.__file__).resolve().parent
    assert package.parent == site, f"haloprune imported from {package}, not the wheel in {site}"
    assert (package / "py.typed").is_file(), "the wheel lacks py.typed"
    main_toml = config_path("configs/main.toml").resolve()
    assert main_toml.is_relative_to(package) and main_toml.is_file(), main_toml
    assert (package / "configs" / "matrix" / "gpt-bytes.toml").is_file(), "the wheel lacks configs/matrix"

    meta = metadata.metadata("haloprune")
    assert meta["Version"] == haloprune.__version__, (meta["Version"], haloprune.__version__)
    assert "HALO" in meta["Summary"] and meta["License-Expression"] == "MIT", meta["Summary"]
    urls = meta.get_all("Project-URL") or []
    assert any("arxiv.org/abs/2008.10183" in u for u in urls), urls
    assert "Typing :: Typed" in (meta.get_all("Classifier") or [])
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"hf", "lightning", "onnx", "docs"} <= extras, extras

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    halo = HALO(model, xi=1e-3, psi=1e-3)
    opt = torch.optim.SGD([*model.parameters(), *halo.parameters()], lr=0.1, momentum=0.9)
    halo.attach(opt)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    global_magnitude_prune(model, 0.5)
    total = sparsity_report(model)[-1]
    assert total.name == "total" and abs(total.sparsity - 0.5) < 0.01, total

    exe = Path(sys.executable).parent / "haloprune"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.strip() == f"haloprune {haloprune.__version__}", version
    listed = subprocess.run([exe, "configs"], capture_output=True, text=True, check=True).stdout
    assert "configs/main.toml" in listed, listed
    print(f"wheel smoke test passed: haloprune {haloprune.__version__} from {package}")


if __name__ == "__main__":
    main()
