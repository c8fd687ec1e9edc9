"""Dataset registry, data-folder discovery, loading with a seeded validation split, and batching.

Two on-disk formats: the 4 IDX files of MNIST / Fashion-MNIST, and the python-pickle batches of
CIFAR-10 / CIFAR-100 (:mod:`haloprune.data.cifar`, chosen by a spec's ``layout``). And one text corpus,
built from an installed package rather than read from a data folder: ``torch-source``, the bytes of
torch's Python sources for a byte-level language model (:mod:`haloprune.data.text`, chosen by a spec's
``corpus``; its splits are contiguous parts of the corpus, its examples windows of bytes). Data is looked for,
in order: an explicit ``data_dir``; ``$HALOPRUNE_DATA`` (or its ``<name>``
subfolder); the Debian system folder (``apt-get install dataset-fashion-mnist``); the user cache
``~/.cache/haloprune/<name>`` filled by ``haloprune data download <name>``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haloprune.core.errors import DataError
from haloprune.data import cifar, text
from haloprune.data.idx import read_idx

__all__ = [
    "CACHE_DIR",
    "DATASETS",
    "ENV_VAR",
    "NORMALIZATIONS",
    "ROLES",
    "SYSTEM_DATA_DIRS",
    "DatasetSpec",
    "SplitData",
    "check_options",
    "default_cache_dir",
    "find_data_dir",
    "iterate_batches",
    "load_dataset",
    "normalization",
    "resolve_file",
]

ROLES: tuple[str, ...] = ("train_images", "train_labels", "test_images", "test_labels")
ENV_VAR = "HALOPRUNE_DATA"

#: Folders where the OS package manager installs datasets (monkeypatched by tests).
SYSTEM_DATA_DIRS: dict[str, Path] = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}

#: Root of the per-user download cache; each dataset lives in ``CACHE_DIR / name``.
CACHE_DIR: Path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "haloprune"


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to find, verify, download and normalise one dataset.

    ``files`` maps each role in :data:`ROLES` to the IDX file name *without* ``.gz``; a folder
    may hold either ``name.gz`` or ``name``. ``payload_sha256`` holds the sha256 of the
    decompressed IDX bytes per role, ``archive_sha256`` (optional) that of the ``.gz`` archive
    served by the mirrors. Mirrors are base URLs; a file's URL is ``mirror + name + ".gz"``.
    A python-format CIFAR dataset has no IDX ``files`` but a ``layout`` (its files, its one archive
    ``mirror + layout.archive`` and that archive's checksums). A text corpus has neither but a ``corpus``
    (what it is built from, its sha256, how it is cut): its classes are the ``num_classes`` = 256 byte
    values, and it has no images (``image_shape``, ``mean``, ``std`` do not apply).
    """

    name: str
    files: Mapping[str, str] = field(hash=False)
    payload_sha256: Mapping[str, str] = field(hash=False)
    mirrors: tuple[str, ...] = ()
    archive_sha256: Mapping[str, str] | None = field(default=None, hash=False)
    image_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    class_names: tuple[str, ...] = ()
    mean: float | tuple[float, ...] = 0.5  # per channel, or one value for all
    std: float | tuple[float, ...] = 0.5
    layout: cifar.PickleLayout | None = None
    corpus: text.ByteCorpus | None = None

    def __post_init__(self) -> None:
        if self.layout is not None or self.corpus is not None:
            return
        missing = [r for r in ROLES if r not in self.files]
        if missing:
            raise ValueError(f"DatasetSpec {self.name!r} lacks files for roles {missing}")
        for fname in self.files.values():
            if not fname or "/" in fname or "\\" in fname or fname in (".", ".."):
                raise ValueError(f"DatasetSpec {self.name!r}: file name {fname!r} must be a plain name")


_STD_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        files=dict(_STD_FILES),
        payload_sha256={
            "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        mirrors=(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=0.2860,
        std=0.3530,
    ),
    "mnist": DatasetSpec(
        name="mnist",
        files=dict(_STD_FILES),
        payload_sha256={
            "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        archive_sha256={
            "train_images": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train_labels": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "test_images": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "test_labels": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        class_names=tuple(str(i) for i in range(10)),
        mean=0.1307,
        std=0.3081,
    ),
    # channel mean / std of the 50,000 training images
    "cifar10": DatasetSpec(
        name="cifar10",
        files={},
        payload_sha256={},
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        image_shape=(3, 32, 32),
        num_classes=10,
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        layout=cifar.PickleLayout(
            folder="cifar-10-batches-py",
            train=tuple(f"data_batch_{i}" for i in range(1, 6)),
            test=("test_batch",),
            meta="batches.meta",
            label_key=b"labels",
            names_key=b"label_names",
            archive="cifar-10-python.tar.gz",
            archive_md5="c58f30108f718f92721af3b95e74349a",
            archive_sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        ),
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        files={},
        payload_sha256={},
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        image_shape=(3, 32, 32),
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        layout=cifar.PickleLayout(
            folder="cifar-100-python",
            train=("train",),
            test=("test",),
            meta="meta",
            label_key=b"fine_labels",
            names_key=b"fine_label_names",
            archive="cifar-100-python.tar.gz",
            archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
            archive_sha256="85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        ),
    ),
    # torch 2.13.0's 2,285 Python files, 46,546,051 bytes
    "torch-source": DatasetSpec(
        name="torch-source",
        files={},
        payload_sha256={},
        num_classes=256,
        corpus=text.ByteCorpus(
            package="torch",
            version="2.13.0",
            sha256="ed6ac99532d8c0346c543df5996c8381b248093c684314adc900bcdcae07a2f7",
        ),
    ),
}


def get_spec(name: str, specs: Mapping[str, DatasetSpec] | None = None) -> DatasetSpec:
    """Look a dataset up by name; unknown names raise DataError listing the known ones."""
    registry = DATASETS if specs is None else specs
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry)) or "(none)"
        raise DataError(f"unknown dataset {name!r}; known datasets: {known}") from None


def default_cache_dir(name: str) -> Path:
    """The user-cache folder for ``name`` (where ``haloprune data download`` puts it)."""
    return CACHE_DIR / name


def resolve_file(folder: Path, filename: str) -> Path | None:
    """``folder/filename.gz`` if it exists, else ``folder/filename``, else None."""
    for candidate in (folder / f"{filename}.gz", folder / filename):
        if candidate.is_file():
            return candidate
    return None


def _missing_files(folder: Path, spec: DatasetSpec) -> list[str]:
    if spec.layout is not None:
        return cifar.missing_files(folder, spec.layout)
    return [f"{fname}[.gz]" for fname in spec.files.values() if resolve_file(folder, fname) is None]


def _complete(folder: Path, spec: DatasetSpec) -> bool:
    return folder.is_dir() and not _missing_files(folder, spec)


def _fix_hint(name: str) -> str:
    apt = "install it with `apt-get install dataset-fashion-mnist`, " if name == "fashion-mnist" else ""
    layout = DATASETS[name].layout if name in DATASETS else None
    files = f"the extracted {layout.archive}" if layout is not None else "the 4 IDX files"
    return (
        f"{apt}run `haloprune data download {name}`, or pass --data-dir / set {ENV_VAR} "
        f"to a folder with {files}"
    )


def find_data_dir(
    name: str, data_dir: Path | str | None = None, *, specs: Mapping[str, DatasetSpec] | None = None
) -> Path:
    """Return the folder holding the 4 IDX files of ``name`` (see the module docstring for the order).

    An explicit ``data_dir`` (or its ``<name>`` subfolder) must hold the files; the other places are
    tried in turn. If none has them, DataError says where it looked and how to fix it.
    """
    spec = get_spec(name, specs)
    if spec.corpus is not None:
        raise DataError(
            f"{name} is built from the installed {spec.corpus.package} package: it has no data folder"
        )
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        for candidate in (folder / name, folder):
            if _complete(candidate, spec):
                return candidate
        if not folder.is_dir():
            raise DataError(f"data dir {folder} for {name} does not exist; {_fix_hint(name)}")
        missing = ", ".join(_missing_files(folder, spec))
        raise DataError(f"data dir {folder} lacks {name} files ({missing}); {_fix_hint(name)}")

    looked: list[str] = []
    env = os.environ.get(ENV_VAR)
    if env:
        folder = Path(env).expanduser()
        for candidate in (folder / name, folder):
            if _complete(candidate, spec):
                return candidate
        looked.append(f"${ENV_VAR}={folder}")
    system = SYSTEM_DATA_DIRS.get(name)
    if system is not None:
        if _complete(system, spec):
            return system
        looked.append(str(system))
    cache = default_cache_dir(name)
    if _complete(cache, spec):
        return cache
    looked.append(str(cache))
    raise DataError(f"{name} data not found (looked in {', '.join(looked)}); {_fix_hint(name)}")


@functools.lru_cache(maxsize=16)
def _read_cached(path: str, mtime_ns: int, size: int, sha256: str | None, hint: str) -> np.ndarray:
    # mtime_ns and size are part of the key so an edited or replaced file is re-read.
    return read_idx(Path(path), sha256, hint=hint)


def _read(path: Path, sha256: str | None, hint: str) -> np.ndarray:
    resolved = path.resolve()
    st = resolved.stat()
    return _read_cached(str(resolved), st.st_mtime_ns, st.st_size, sha256, hint)


@dataclass
class SplitData:
    """Normalised float32 images ``(N, C, H, W)`` and int64 labels for train / val / test; or, for a text
    corpus, int64 windows of bytes ``(N, context)`` and their next bytes ``(N, context)``.

    ``train_indices`` / ``val_indices`` are the rows of the original training file in each split (a text
    corpus: the windows of its training and validation parts). ``augment``: training batches get a random
    padded crop and flip (:mod:`haloprune.data.augment`). ``sha256``: the digest of the whole corpus the
    splits were cut from (a text corpus; image files are each checked against their spec's digest).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    spec: DatasetSpec
    train_indices: torch.Tensor | None = None
    val_indices: torch.Tensor | None = None
    augment: bool = False
    normalize: str = "dataset"  # how the images were normalised (see NORMALIZATIONS)
    sha256: str | None = None

    @property
    def mean_std(self) -> tuple[float | tuple[float, ...], float | tuple[float, ...]]:
        """The (mean, std) the images were normalised with: ``x = (pixel/255 − mean) / std``."""
        return normalization(self.spec, self.normalize)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def to(self, device: torch.device | str) -> SplitData:
        """A copy with every tensor on ``device`` (the data is small enough to live there whole)."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return SplitData(**moved)


# How images are normalised after scaling to [0, 1]: by the dataset's own channel statistics (haloprune's
# default), not at all (the HALO reference's MNIST: ToTensor only), or by the constants the HALO reference
# uses for both CIFAR-10 and CIFAR-100 (CIFAR-10's channel means; its "std" values are not CIFAR-10's).
REFERENCE_CIFAR = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
NORMALIZATIONS = ("dataset", "none", "reference-cifar")


def normalization(spec: DatasetSpec, how: str = "dataset") -> tuple[Any, Any]:
    """``(mean, std)`` of normalisation ``how`` (one of :data:`NORMALIZATIONS`) for ``spec``'s images."""
    if how == "dataset":
        return spec.mean, spec.std
    if how == "none":
        return 0.0, 1.0
    if how == "reference-cifar":
        if spec.image_shape[0] != 3:
            raise DataError(f"normalize='reference-cifar' is for 3-channel images; {spec.name} has 1 channel")
        return REFERENCE_CIFAR
    raise DataError(f"unknown normalization {how!r}; known: {', '.join(NORMALIZATIONS)}")


def _to_float(
    images: np.ndarray, spec: DatasetSpec, pad_to: int | None = None, normalize: str = "dataset"
) -> torch.Tensor:
    """uint8 images → normalised float32 ``(N, C, H, W)`` (see :func:`normalization`), zero-padded (black,
    before normalising) to ``pad_to`` x ``pad_to`` when given."""
    x = torch.from_numpy(images.astype(np.float32))  # astype copies: writable, owned by torch
    x = x.reshape(len(images), *spec.image_shape).div_(255.0)
    if pad_to is not None:
        dh, dw = pad_to - x.shape[-2], pad_to - x.shape[-1]
        x = torch.nn.functional.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
    m, sd = normalization(spec, normalize)
    mean = torch.tensor(m, dtype=torch.float32).reshape(-1, 1, 1)
    std = torch.tensor(sd, dtype=torch.float32).reshape(-1, 1, 1)
    return x.sub_(mean).div_(std)


def _check_pair(
    images: np.ndarray, labels: np.ndarray, spec: DatasetSpec, split: str, folder: Path, hint: str
) -> None:
    c, h, w = spec.image_shape
    want = (h, w) if c == 1 else (c, h, w)
    if images.ndim != 1 + len(want) or images.shape[1:] != want:
        raise DataError(
            f"{split} images in {folder} have shape {images.shape}, "
            f"expected (N, {', '.join(map(str, want))}) for {spec.name}; {hint}"
        )
    if labels.ndim != 1:
        raise DataError(f"{split} labels in {folder} have shape {labels.shape}, expected (N,); {hint}")
    if len(images) != len(labels):
        raise DataError(
            f"{split} images and labels in {folder} disagree: "
            f"{len(images)} images, {len(labels)} labels; {hint}"
        )
    if len(labels) and int(labels.max()) >= spec.num_classes:
        raise DataError(
            f"{split} labels in {folder} go up to {int(labels.max())}, but {spec.name} has "
            f"{spec.num_classes} classes (0..{spec.num_classes - 1}); {hint}"
        )


def check_options(
    spec: DatasetSpec,
    *,
    context: int | None = None,
    pad_to: int | None = None,
    normalize: str = "dataset",
    augment: bool | None = None,
) -> None:
    """A :class:`DataError` for a setting that does not apply to ``spec``'s kind of data: ``context`` (the
    window length) to images, or an image setting (``pad_to``, ``normalize``, ``augment``) to a text
    corpus."""
    if spec.corpus is None:
        if context is not None:
            raise DataError(f"context is the window length of a text corpus; {spec.name} is images")
        return
    given = [
        k for k, v in (("pad_to", pad_to), ("normalize", normalize != "dataset"), ("augment", augment)) if v
    ]
    if given:
        raise DataError(f"{given[0]} is an image setting; {spec.name} is a text corpus")


def load_dataset(
    name: str,
    data_dir: Path | str | None = None,
    *,
    val_size: int = 5000,
    seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    verify: bool = True,
    specs: Mapping[str, DatasetSpec] | None = None,
    pad_to: int | None = None,
    normalize: str = "dataset",
    context: int | None = None,
) -> SplitData:
    """Load ``name`` as normalised tensors with a seeded validation split carved from train.

    ``verify`` checks every file against the known sha256 (use ``verify=False`` for custom IDX
    data). ``train_subset`` draws that many seeded samples from what is left after the validation
    split; ``test_subset`` keeps the first n test samples. ``pad_to`` zero-pads every image to that
    side (e.g. 28x28 Fashion-MNIST to CIFAR's 32x32). ``normalize``: ``"dataset"`` (its channel mean and
    std), ``"none"`` (pixels in [0, 1]) or ``"reference-cifar"`` (see :func:`normalization`). Parsed files
    are cached in-process.

    A text corpus (``torch-source``) is built from its installed package, not read from ``data_dir``, and
    verified against its spec's sha256 (unless not ``verify``); it is cut into contiguous parts and windows
    of ``context`` + 1 bytes (None: the corpus's default), and ``val_size``, ``train_subset`` and
    ``test_subset`` count windows (:func:`haloprune.data.text.load_corpus`).
    """
    spec = get_spec(name, specs)
    check_options(spec, context=context, pad_to=pad_to, normalize=normalize)
    if spec.corpus is not None:
        parts, digest = text.load_corpus(
            spec.corpus,
            name,
            context=spec.corpus.context if context is None else context,
            val_size=val_size,
            seed=seed,
            train_subset=train_subset,
            test_subset=test_subset,
            verify=verify,
        )
        return SplitData(**parts, spec=spec, sha256=digest)
    normalization(spec, normalize)  # an unknown or inapplicable normalisation fails before any reading
    side = spec.image_shape[-1]
    if pad_to is not None and pad_to < max(spec.image_shape[1:]):
        raise DataError(f"pad_to={pad_to} is smaller than {name}'s {side}x{side} images")
    folder = find_data_dir(name, data_dir, specs=specs)
    hint = f"replace it (`haloprune data download {name}`) or point --data-dir / {ENV_VAR} at good files"
    if verify and spec.layout is None:
        hint += " (for custom IDX data, load with verify=False)"
    if spec.layout is not None:  # the archive was verified when downloaded; the files' format is checked
        arrays = cifar.read_arrays(folder, spec.layout, spec.num_classes, hint)
    else:
        arrays = {}
        for role in ROLES:
            path = resolve_file(folder, spec.files[role])
            if path is None:  # raced with a deletion since find_data_dir
                raise DataError(f"{spec.files[role]}[.gz] in {folder} does not exist; {_fix_hint(name)}")
            arrays[role] = _read(path, spec.payload_sha256.get(role) if verify else None, hint)

    _check_pair(arrays["train_images"], arrays["train_labels"], spec, "train", folder, hint)
    _check_pair(arrays["test_images"], arrays["test_labels"], spec, "test", folder, hint)

    n_train = len(arrays["train_images"])
    n_test = len(arrays["test_images"])
    if not 0 <= val_size < n_train:
        raise DataError(
            f"val_size={val_size} is out of range: {name} has {n_train} training images, "
            f"so use 0 <= val_size < {n_train}"
        )
    if train_subset is not None and not 0 < train_subset <= n_train - val_size:
        raise DataError(
            f"train_subset={train_subset} is out of range: {n_train - val_size} training images are left "
            f"after the validation split, so use 1..{n_train - val_size} (or none)"
        )
    if test_subset is not None and not 0 < test_subset <= n_test:
        raise DataError(f"test_subset={test_subset} is out of range: use 1..{n_test} (or none)")

    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_train, generator=generator)
    val_idx = perm[:val_size].sort().values
    rest = perm[val_size:]
    if train_subset is not None:
        rest = rest[:train_subset]
    train_idx = rest.sort().values

    tr, va = train_idx.numpy(), val_idx.numpy()
    images, labels = arrays["train_images"], arrays["train_labels"]
    n_te = n_test if test_subset is None else test_subset
    return SplitData(
        x_train=_to_float(images[tr], spec, pad_to, normalize),
        y_train=torch.from_numpy(labels[tr].astype(np.int64)),
        x_val=_to_float(images[va], spec, pad_to, normalize),
        y_val=torch.from_numpy(labels[va].astype(np.int64)),
        x_test=_to_float(arrays["test_images"][:n_te], spec, pad_to, normalize),
        y_test=torch.from_numpy(arrays["test_labels"][:n_te].astype(np.int64)),
        spec=spec,
        train_indices=train_idx,
        val_indices=val_idx,
        normalize=normalize,
    )


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(xb, yb)`` batches, indexing whole batches of a (seeded) random permutation at once."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x and y disagree in length: {n} vs {len(y)}")
    order = None
    if shuffle:
        device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=device).to(x.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            yield x[start:end], y[start:end]
        else:
            idx = order[start:end]
            yield x[idx], y[idx.to(y.device)]
