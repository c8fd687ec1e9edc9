"""Typed, validated configuration (TOML files + ``--set key=value`` overrides).

Every section forbids unknown keys, so a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from haloprune.core.errors import ConfigError, DataError
from haloprune.data.datasets import check_options, get_spec
from haloprune.models import MODELS
from haloprune.penalties import PENALTIES
from haloprune.penalties.base import valid_keywords

Sparsity = Annotated[float, Field(ge=0.0, lt=1.0)]


def added_field(default: Any, **kwargs: Any) -> Any:
    """A field added after results were stored: left out of dumps while at its default, so the TOML of old
    runs and the keys of finished sweep jobs stay the same."""
    return Field(default, exclude_if=lambda v: v == default, **kwargs)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    name: str = "fashion-mnist"  # a dataset of haloprune.data.DATASETS
    dir: str | None = None  # default: HALOPRUNE_DATA, then the system/cached copies
    val_size: int = Field(5000, ge=0)  # carved from the training set (seeded), for choosing hyperparameters
    train_subset: int | None = Field(None, gt=0)  # use only this many training images (fast tests)
    test_subset: int | None = Field(None, gt=0)  # use only this many test images
    # random 4-pixel-padded crop + horizontal flip per training batch; None: on for CIFAR, off otherwise
    augment: bool | None = added_field(None)
    pad_to: int | None = added_field(None, gt=0)  # zero-pad images to this side (28x28 Fashion-MNIST -> 32)
    # after scaling to [0, 1]: "dataset" (its channel mean/std), "none" (the HALO reference's MNIST), or
    # "reference-cifar" (the constants the reference uses for CIFAR-10 and CIFAR-100)
    normalize: Literal["dataset", "none", "reference-cifar"] = added_field("dataset")
    # a text corpus (torch-source): the bytes of context a window gives the model, which is built for that
    # many positions (None: the corpus's default, 128); val_size, train_subset, test_subset count windows
    context: int | None = added_field(None, gt=0)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        try:
            get_spec(v)
        except DataError as err:
            raise ValueError(str(err)) from None
        return v

    @model_validator(mode="after")
    def _applies(self) -> DataConfig:
        spec = get_spec(self.name)
        try:
            check_options(
                spec, context=self.context, pad_to=self.pad_to, normalize=self.normalize, augment=self.augment
            )
        except DataError as err:
            raise ValueError(str(err)) from None
        if spec.corpus is not None and self.dir is not None:
            raise ValueError(f"dir: {self.name} is built from the installed {spec.corpus.package}, not read")
        return self

    @property
    def augmented(self) -> bool:
        """Whether training batches are augmented (the default depends on the dataset)."""
        return self.name.startswith("cifar") if self.augment is None else self.augment

    @property
    def context_length(self) -> int | None:
        """A text corpus's context length (``context``, or the corpus's default); None for images."""
        corpus = get_spec(self.name).corpus
        return None if corpus is None else (self.context or corpus.context)


class ModelConfig(Section):
    name: str = "lenet-300-100"  # a model of haloprune.models.MODELS
    width: float = added_field(1.0, gt=0)  # channel multiplier of the conv nets (vgg16-bn, resnet*)
    # the transformer's shape (vit; None: the model's default)
    dim: int | None = added_field(None, gt=0)  # token width
    depth: int | None = added_field(None, gt=0)  # blocks
    heads: int | None = added_field(None, gt=0)  # attention heads per block
    mlp_ratio: float | None = added_field(None, gt=0)  # MLP hidden width / dim
    patch: int | None = added_field(None, gt=0)  # patch side in pixels
    # start from these weights instead of a fresh initialisation: a finished run directory (runs/<name>),
    # a .safetensors file (haloprune's sparse export, masks included, or a plain state dict), or a torch
    # state_dict file
    init_from: str | None = added_field(None, min_length=1)

    def options(self) -> dict[str, Any]:
        """The shape settings given (not left at their defaults), as constructor keyword arguments."""
        out: dict[str, Any] = {"width": self.width} if self.width != 1.0 else {}
        out |= {k: getattr(self, k) for k in SHAPE_KEYS if getattr(self, k) is not None}
        return out

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in MODELS:
            raise ValueError(f"unknown model {v!r}; known: {', '.join(MODELS.names())}")
        return v


SHAPE_KEYS = ("dim", "depth", "heads", "mlp_ratio", "patch")


class OptimConfig(Section):
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"  # HALO's fused path takes all three
    epochs: int = Field(20, gt=0)  # passes over the training set
    batch_size: int = Field(100, gt=0)  # the GLOBAL batch: under torchrun each process takes its share
    lr: float = Field(0.1, gt=0)  # the learning rate the schedule starts from
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only
    nesterov: bool = False  # SGD only
    weight_decay: float = Field(1e-4, ge=0)  # the optimizer's (AdamW: decoupled, as torch.optim)
    schedule: Literal["constant", "step", "cosine"] = "cosine"  # lr per step: cosine to 0 over the run,
    # or "step" (times gamma at each milestone), or "constant"
    # epochs (or steps: milestone_unit) at which "step" multiplies lr by gamma
    milestones: list[int] = Field(default_factory=list)
    # one factor for every milestone, or one per milestone (e.g. [0.1, 0.01])
    gamma: Annotated[float, Field(gt=0, le=1)] | list[Annotated[float, Field(gt=0, le=1)]] = 0.1
    # what milestones count: "epoch", or "step" (0-based optimizer steps: the lr changes from that step on)
    milestone_unit: Literal["epoch", "step"] = added_field("epoch")
    # the weights training ends with: "last" (the final epoch's), or "best-test" (those of the epoch with the
    # best TEST accuracy, as the HALO reference reports CIFAR results: a choice made on the test set)
    keep: Literal["last", "best-test"] = added_field("last")
    eval_batch_size: int = Field(1000, gt=0)  # batch size of evaluation (no effect on results)
    # bf16 autocast of forward and loss; parameters and HALO stay fp32
    amp: Literal["none", "bf16"] = added_field("none")
    # channels_last memory format for conv nets; None: on for CUDA, off on CPU
    channels_last: bool | None = added_field(None)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = added_field(
        (0.9, 0.999)
    )  # Adam/AdamW only
    eps: float = added_field(1e-8, gt=0)  # Adam/AdamW only
    # how `torchrun` processes share the training: "ddp" (each holds the whole model, gradients averaged)
    # or "fsdp" (FSDP2: weights, gradients, optimizer state and HALO's λ sharded across the processes;
    # checkpoints sharded). One process trains the same either way.
    parallel: Literal["ddp", "fsdp"] = added_field("ddp")

    @model_validator(mode="after")
    def _gammas(self) -> OptimConfig:
        if isinstance(self.gamma, list) and len(self.gamma) != len(self.milestones):
            raise ValueError(
                f"gamma has {len(self.gamma)} factors but there are {len(self.milestones)} milestones: "
                "give one factor, or one per milestone"
            )
        return self

    @model_validator(mode="after")
    def _applies(self) -> OptimConfig:
        if self.optimizer == "sgd":
            for key, default in (("betas", (0.9, 0.999)), ("eps", 1e-8)):
                if getattr(self, key) != default:
                    raise ValueError(f"{key} is an Adam/AdamW setting; optimizer is 'sgd'")
        elif self.nesterov:
            raise ValueError(f"nesterov is an SGD setting; optimizer is {self.optimizer!r}")
        elif self.momentum not in (0.0, OptimConfig.model_fields["momentum"].default):
            # the default (0.9) and 0 are accepted, so switching optimizer does not need a second key
            raise ValueError(
                f"momentum is an SGD setting; optimizer is {self.optimizer!r} (Adam's are betas)"
            )
        return self

    @model_validator(mode="after")
    def _sharded(self) -> OptimConfig:
        if self.parallel == "fsdp" and self.keep == "best-test":
            raise ValueError(
                'keep = "best-test" keeps a copy of the whole model, which parallel = "fsdp" shards: '
                'use keep = "last"'
            )
        return self

    def steps_per_epoch(self, n_train: int) -> int:
        """Optimizer steps in one epoch over ``n_train`` images: global batches, the last one partial."""
        return math.ceil(n_train / self.batch_size)


M = TypeVar("M")


def check_method_names(methods: dict[str, M]) -> dict[str, M]:
    if not methods:
        raise ValueError("give at least one method")
    for name in methods:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise ValueError(f"method name {name!r} may use only letters, digits, '.', '_' and '-'")
    return methods


def _default(key: str) -> Any:
    """A penalty setting's default as the penalties' constructors write it (:meth:`Penalty.defaults`: the
    one place it is written); every penalty that takes ``key`` must give the same."""
    found = {repr(d[key]): d[key] for n in PENALTIES.names() if key in (d := PENALTIES[n].defaults())}
    if len(found) != 1:
        raise RuntimeError(
            f"penalties disagree on the default of {key!r} (or none takes it): {sorted(found)}"
        )
    return next(iter(found.values()))


class PenaltyConfig(Section):
    """The ``[penalty]`` section: ``name`` and the settings of that penalty. The keys are the union of the
    registered penalties' constructor arguments (a key that does not apply to ``name`` is refused), their
    defaults and rules are the penalty's own (:meth:`~haloprune.penalties.Penalty.defaults`,
    :meth:`~haloprune.penalties.Penalty.check_options`); ``xi`` and ``psi`` at 0 mean "not given"."""

    name: str = "none"  # "none" or a registered penalty (haloprune.penalties.PENALTIES)
    xi: float = Field(0.0, ge=0)  # ξ: the strength of the weight term (HALO: ξ·Σ|w|/λ²; L1: ξ·Σ|w|)
    psi: float = Field(0.0, ge=0)  # ψ: HALO's strength of the λ term ψ·|Σλ − p| (target mode: from psi_hat)
    p: float = Field(_default("p"), ge=0)  # HALO: the λ budget Σλ is pulled towards
    form: Literal["l1", "l2"] = _default("form")  # HALO: ψ·|Σλ − p| ("l1") or ψ·(Σλ − p)² ("l2")
    lambda_init: float = Field(_default("lambda_init"), gt=0)  # HALO: every λ at the start
    lambda_min: float = Field(_default("lambda_min"), gt=0)  # HALO: λ's floor (λ in [lambda_min, lambda_max])
    scope: Literal["all", "conv", "linear"] = "all"  # which layers' weights are penalised
    include_bias: bool = False  # penalise the biases too
    # HALO: fused analytic update inside optimizer.step(); False: reference autograd path
    fused: bool = _default("fused")
    lambda_lr_scale: float = Field(_default("lambda_lr_scale"), gt=0)  # λ's lr / the weights' (reference: 1)
    # None: λ's weight decay is the weights' (reference)
    lambda_weight_decay: float | None = Field(_default("lambda_weight_decay"), ge=0)
    # λ's lr over the run: "follow" the weights' schedule, or "constant" (the reference's MNIST runs, whose
    # λ scheduler is built on the weights' optimizer and so never decays λ)
    lambda_schedule: Literal["follow", "constant"] = added_field("follow")
    # with "follow" and a "step" schedule: λ's own factor(s) at the milestones (None: the weights' gamma);
    # the reference's CIFAR HALO runs decay λ by gamma² at each milestone
    lambda_gamma: Annotated[float, Field(gt=0, le=1)] | list[Annotated[float, Field(gt=0, le=1)]] | None = (
        added_field(None)
    )
    gamma: float = Field(_default("gamma"), gt=0)  # adaptive lasso: weights 1/|ŵ|^gamma
    a: float = Field(_default("a"), gt=2)  # SCAD's shape parameter (Fan & Li 2001)
    lambda_max: float = added_field(_default("lambda_max"), gt=0)  # HALO: λ in [lambda_min, lambda_max]
    # HALO target-sparsity mode: ξ and ψ are set from the step budget B = Σ lr_t/(1 − momentum) and
    # steered during training so that this fraction of the weights ends exactly at zero
    target_sparsity: float | None = added_field(_default("target_sparsity"), gt=0, lt=1)
    psi_hat: float = added_field(_default("psi_hat"), gt=0)  # ψ·B: how far λ can travel over the run
    # fraction of B by which the target density is reached
    ramp_end: float = added_field(_default("ramp_end"), gt=0, le=1)
    # HALO: shrink by the proximal map (exact zeros) instead of the subgradient
    prox: bool = added_field(_default("prox"))
    # how target mode sets ξ: "exact" (the threshold that leaves the ramp's density, chosen before every
    # step; None: this default), "pi" (steer c from the density every 10 steps) or "hard" (the same ramp
    # with ξ = 0: no shrinkage, the lowest |w|·λ² zeroed after every step); see
    # docs/results/target-exact.md
    target_control: Literal["exact", "pi", "hard"] | None = added_field(_default("target_control"))
    # HALO target mode, exact control with Adam/AdamW: the most one step's shrinkage takes from a weight,
    # in units of lr (None: the default, 10; inf: unbounded); docs/results/matrix.md, finding 10
    max_shrink: float | None = added_field(_default("max_shrink"), gt=0)
    # HALO with Adam/AdamW: "coupled" (Adam on task + HALO; default) or "decoupled" (plain lr steps;
    # target mode's and prox's default)
    coupling: Literal["coupled", "decoupled"] | None = added_field(_default("coupling"))
    # HALO: λ's storage (None: the weights' precision, at least float32); "bfloat16" halves HALO's memory
    # (λ and its moments rounded stochastically inside the fused step)
    lambda_dtype: Literal["float32", "bfloat16"] | None = added_field(_default("lambda_dtype"))
    # extra parameters by dotted-name glob (e.g. ["tok_emb.weight"]) / default ones left out
    include: list[str] | None = added_field(None)
    exclude: list[str] | None = added_field(None)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v != "none" and v not in PENALTIES:
            raise ValueError(f"unknown penalty {v!r}; known: none, {', '.join(PENALTIES.names())}")
        return v

    @model_validator(mode="after")
    def _applies(self) -> PenaltyConfig:
        if self.name == "none":
            return self
        valid = _penalty_keys(self.name)
        for key, field in PenaltyConfig.model_fields.items():
            if key != "name" and key not in valid and getattr(self, key) != field.get_default():
                raise ValueError(
                    f"{key} does not apply to penalty {self.name!r} "
                    f"(its settings: {', '.join(sorted(valid))})"
                )
        return self

    def selection(self) -> dict[str, Any]:
        """The parameters the penalty acts on, as keyword arguments (scope, include_bias, include,
        exclude)."""
        return {k: getattr(self, k) for k in ("scope", "include_bias", "include", "exclude")}

    def kwargs(self, penalty: str | None = None) -> dict[str, Any]:
        """Arguments for the constructor of ``penalty`` (default: this config's): the settings that apply
        to it (the adaptive lasso's first fit builds an L1 from the adaptive lasso's config)."""
        valid = _penalty_keys(penalty or self.name) - LAMBDA_OPTIM_KEYS
        return {k: v for k, v in self.model_dump().items() if k in valid}


# λ's optimizer settings (its parameter group and its lr schedule), not constructor arguments
LAMBDA_OPTIM_KEYS = {"lambda_lr_scale", "lambda_weight_decay", "lambda_schedule", "lambda_gamma"}


def _penalty_keys(name: str) -> set[str]:
    """The config keys that apply to a registered penalty: its constructor's keyword arguments, plus λ's
    optimizer settings for penalties with learned parameters."""
    cls = PENALTIES[name]
    keys = valid_keywords(cls) & set(PenaltyConfig.model_fields)
    if cls.learns:
        keys |= LAMBDA_OPTIM_KEYS
    return keys


class PruneConfig(Section):
    # the sparsities the trained model is pruned to, once each, and evaluated (no fine-tuning)
    sparsities: list[Sparsity] = Field(default_factory=lambda: [0.5, 0.7, 0.9, 0.95, 0.98, 0.99])
    per_layer: bool = False  # False: global magnitude pruning (the paper's); True: same fraction per layer
    # which layers are pruned (and penalised: a penalty's scope must match); the reference prunes
    # only the convolutions of its CIFAR networks
    scope: Literal["all", "conv", "linear"] = added_field("all")
    # training images whose forward passes re-estimate BatchNorm statistics after each one-shot pruning
    # (no weight changes); 0: off, as in the paper
    recalibrate_bn: int = added_field(0, ge=0)
    # parameters pruned besides (include) or instead of (exclude) the default ones, by dotted-name glob;
    # a penalty must name the same
    include: list[str] | None = added_field(None)
    exclude: list[str] | None = added_field(None)
    # what a sparsity s is a fraction of: "all" the prunable weights (s of them end at zero), or the
    # "nonzero" ones (the HALO reference: weights already at zero stay pruned and s of the rest go too)
    of: Literal["all", "nonzero"] = added_field("all")
    # before pruning, weights with |w| below this are set to zero (the reference's mnist_check_params: 1e-5)
    zero_below: float = added_field(0.0, ge=0)

    def selection(self) -> dict[str, Any]:
        """The pruned parameters as keyword arguments (scope, include, exclude)."""
        return {"scope": self.scope, "include": self.include, "exclude": self.exclude}

    @field_validator("sparsities")
    @classmethod
    def _nonempty(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one sparsity")
        return sorted(set(v))


class LoggingConfig(Section):
    """``[logging]``: where a run's metrics also go (``metrics.jsonl`` stays the record). Not part of a
    run's identity: it is left out of ``config.toml`` and of sweep job keys, so adding a logger to a run
    or a sweep reruns nothing. Backends are optional extras: ``haloprune[tensorboard]``, ``[mlflow]``,
    ``[wandb]``."""

    backend: Literal["none", "tensorboard", "mlflow", "wandb"] = "none"  # the tracker (or --logger)
    # TensorBoard event files / W&B run folders (default: <out_dir>/tensorboard, <out_dir>/wandb)
    dir: str | None = None
    tracking_uri: str | None = None  # MLflow (default: sqlite:///<out_dir>/mlflow.db)
    project: str | None = None  # the MLflow experiment / W&B project (default: the run's or sweep's name)
    wandb_mode: Literal["offline", "online"] = "offline"  # offline needs no account


class Setup(Section):
    """What a training run and a sweep's jobs share: the device, data, model, optimiser and pruning."""

    device: str = "cpu"  # torch device: "cpu", "cuda", "cuda:1"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    prune: PruneConfig = PruneConfig()


class RunConfig(Setup):
    """One run: its setup, its name, where it writes and its seed."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$")  # the run's folder is <out_dir>/<name>
    out_dir: str = "runs"  # where run folders go
    seed: int = Field(0, ge=0, lt=2**63)  # torch.manual_seed takes 64-bit seeds

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


class TrainConfig(RunConfig):
    """One training run (``haloprune train``)."""

    penalty: PenaltyConfig = PenaltyConfig()
    logging: LoggingConfig = Field(LoggingConfig(), exclude=True)  # not part of the run (see LoggingConfig)

    @field_validator("penalty")
    @classmethod
    def _acts(cls, v: PenaltyConfig) -> PenaltyConfig:
        check_acts(v.model_dump())
        return v

    @model_validator(mode="after")
    def _same_scope(self) -> TrainConfig:
        check_scope(self.penalty.model_dump(), self.prune, "penalty")
        check_penalty_optim(self.penalty.model_dump(), self.optim, "penalty")
        return self


def check_acts(penalty: dict[str, Any], where: str = "") -> None:
    """The penalty's own rules, as its constructor applies them: settings that cannot go together
    (:meth:`~haloprune.penalties.base.Penalty.check_options`) and no silent no-op — a penalty that cannot
    act (L1 with xi = 0, HALO with xi = psi = 0 and no target_sparsity, ...;
    :meth:`~haloprune.penalties.base.Penalty.cannot_act`) is refused. Checked where the penalty is run as
    configured (a training run, a sweep's grid points), not on a :class:`PenaltyConfig` alone: a sweep's
    ``target`` methods set target_sparsity per job."""
    name = penalty.get("name", "none")
    if name == "none":
        return
    prefix = f"{where}{' ' if where else ''}"
    try:
        PENALTIES[name].check_options(**penalty)
    except ValueError as err:
        raise ValueError(f"{prefix}{err}") from None
    why = PENALTIES[name].cannot_act(penalty)
    if why:
        raise ValueError(f"{prefix}{name!r} {why}")


def check_scope(penalty: dict[str, Any], prune: PruneConfig, where: str) -> None:
    """A penalty acts on the parameters that are pruned: its scope, include and exclude must be
    ``prune``'s."""
    if penalty.get("name", "none") == "none":
        return
    for key, default in (("scope", "all"), ("include", None), ("exclude", None)):
        mine, theirs = penalty.get(key, default), getattr(prune, key)
        if mine != theirs:
            raise ValueError(
                f"{where}.{key} is {mine!r} but prune.{key} is {theirs!r}: set both to the parameters "
                "to prune"
            )


def check_penalty_optim(penalty: dict[str, Any], optim: OptimConfig, where: str) -> None:
    """The penalty's optimizer settings fit ``optim``: ``coupling`` is how HALO combines with Adam/AdamW
    (target mode and prox are decoupled updates); ``lambda_gamma`` needs a step schedule that λ follows."""
    lam_gamma = penalty.get("lambda_gamma")
    if lam_gamma is not None:
        if penalty.get("lambda_schedule", "follow") != "follow":
            raise ValueError(
                f"{where}.lambda_gamma applies to lambda_schedule 'follow' (λ decays at the milestones)"
            )
        if optim.schedule != "step":
            raise ValueError(f"{where}.lambda_gamma applies to optim.schedule 'step', not {optim.schedule!r}")
        if isinstance(lam_gamma, list) and len(lam_gamma) != len(optim.milestones):
            raise ValueError(
                f"{where}.lambda_gamma has {len(lam_gamma)} factors but optim has {len(optim.milestones)} "
                "milestones: give one factor, or one per milestone"
            )
    coupling = penalty.get("coupling")
    if coupling is None:
        return
    if optim.optimizer == "sgd":  # (coupled with target_sparsity or prox: HALO.check_options refuses it)
        raise ValueError(f"{where}.coupling applies to optim.optimizer 'adam' or 'adamw', not 'sgd'")


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in recursively (dicts merge, anything else replaces)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


C = TypeVar("C", bound=BaseModel)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values in TOML syntax; bare words are strings)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        node = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[leaf] = _parse_value(value.strip())
    return data


def one_line(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}")
    return f"invalid config {source}: " + "; ".join(parts)


def validate(cls: type[C], data: dict[str, Any], source: str = "") -> C:
    """Validate a plain dict into ``cls``; any problem becomes a one-line :class:`ConfigError`."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(one_line(err, source or "(overrides)")) from None


SHIPPED = Path(__file__).resolve().parent / "configs"  # the configs haloprune ships (in the wheel too)


def config_path(path: str | Path) -> Path:
    """``path`` itself if it exists; else the shipped config it names (``configs/main.toml``,
    ``main.toml``, ``matrix/lenet300-sgd.toml``), so the configs work wherever haloprune is installed; else
    ``path`` (which then is refused as missing)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    shipped = SHIPPED.joinpath(*parts)
    return shipped if parts and shipped.is_file() else path


def shipped_configs() -> list[str]:
    """The shipped configs, as ``configs/...`` paths (what a checkout has, and what :func:`config_path`
    finds from anywhere)."""
    return sorted(f"configs/{p.relative_to(SHIPPED).as_posix()}" for p in SHIPPED.rglob("*.toml"))


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Read a TOML file (optional; a shipped config by its name, see :func:`config_path`), apply
    overrides, validate."""
    data: dict[str, Any] = {}
    source = "(command line)"
    if path is not None:
        path = config_path(path)
        source = str(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path} is not valid TOML: {err}") from None
    if not overrides:
        return validate(cls, data, source)
    try:  # overrides edit the resolved config, so `--set methods.l1.grid=[...]` keeps the other methods
        base = cls.model_validate(data).model_dump()
    except ValidationError:  # incomplete without the overrides (a required key given by --set)
        base = data
    return validate(cls, apply_overrides(base, overrides), f"{source} with --set")


def to_toml(cfg: BaseModel) -> str:
    """The resolved config as TOML (``None`` values are left out: they mean "default")."""
    return tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True))
