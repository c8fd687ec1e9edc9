"""How a fused step's kernel is run: compiled once, then called without per-step guards.

``torch.compile`` checks a few hundred guards on every call of a compiled function (the shape, stride,
dtype and aliasing of each of ~40 tensors, the constants) and enters it through its frame hook: about
15 µs a step on a CPU, as much as the whole update of a small model's λ. A fused step's arguments do
not change structure from step to step: the weights, λ and the optimizer's state are the same tensors
every step, and only the gradients (whose layout is the weights') and the hyperparameter table are new.
So the first call of a plan goes through ``torch.compile`` (compiling on first use, guarded), and its
later calls run the very code that call ran — the compiled entry whose guards passed, taken from
dynamo's cache — directly: no second compile, and no guards or frame hook per step.

The guards are skipped only where they are known to hold: a call takes the direct path when its
tensors are the very tensors (by identity, kept alive by the plan) of a call whose guards passed, and
each gradient has its weight's strides (the only layout a new gradient could change). Anything else — a
new tensor, sharded (FSDP2) parameters whose local blocks are new objects each step, a PyTorch whose
dynamo cache cannot be read — takes ``torch.compile``'s guarded path, with the same result.
``HALOPRUNE_COMPILE=0`` runs the kernels eagerly.
"""

from __future__ import annotations

import inspect
import os
import types
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

Kernel = Callable[..., None]

_COMPILED: dict[tuple[Kernel, str], Kernel] = {}
_GRADS = {"grads": "ws", "other_grads": "others"}  # a kernel's new-each-step tensors, and their weights
_KEPT = 4  # direct calls a plan keeps (each holds its tensors: replaced optimizer state must not pile up)


def compiled(kernel: Kernel, device_type: str) -> Kernel:
    """``kernel`` compiled for a device type (guarded), or ``kernel`` itself if compiling is off
    (``HALOPRUNE_COMPILE=0``) or impossible."""
    if not _compiling():
        return kernel
    fn = _COMPILED.get((kernel, device_type))
    if fn is None:
        fn = _COMPILED[(kernel, device_type)] = _safe_compile(kernel)
    return fn


def _compiling() -> bool:
    return os.environ.get("HALOPRUNE_COMPILE", "1") != "0"


def _safe_compile(fn: Kernel) -> Kernel:
    # With dynamic=False dynamo's guards already pin every input's size and stride; inductor's own
    # per-call size asserts would repeat that check for each of ~30 tensors (~60 µs a step on CPU).
    compiled_fn = torch.compile(fn, dynamic=False, options={"size_asserts": False})
    state = {"ok": True}

    def run(*args: object, **kwargs: object):
        if state["ok"]:
            try:
                return compiled_fn(*args, **kwargs)
            except Exception as err:  # no C++ compiler / Triton: fall back, once, loudly
                state["ok"] = False
                warnings.warn(
                    f"HALO's fused step could not be compiled ({type(err).__name__}); running it "
                    "eagerly (same result, slower)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return fn(*args, **kwargs)

    return run


class Launches:
    """The direct calls of one plan's kernels: identity of the tensors → the compiled code to run. Held
    by the plan, so the tensors it keeps alive (their ids stay theirs) die with it."""

    def __init__(self, kept: int = _KEPT) -> None:
        self.calls: dict[tuple, tuple[list[torch.Tensor], Kernel | None]] = {}
        self.enabled = _compiling()  # read once per plan, not per step
        self.kept = kept  # the most direct calls held (the oldest go first)

    def __getstate__(self) -> dict[str, object]:
        """Pickled (``torch.save`` of an attached penalty, ``copy.deepcopy``) without its direct calls:
        they are dynamo's code for this process, made again on first use."""
        return {**self.__dict__, "calls": {}}


def launch(
    kernel: Kernel,
    launches: Launches | None,
    t: NamedTuple,
    s: NamedTuple,
    c: NamedTuple,
    known: tuple | None = None,
) -> None:
    """Run ``kernel(t, s, c)`` (``t``: the step's tensors; ``s``: its step values; ``c``: its constants):
    directly where these tensors' compiled code is known (see the module doc), else through
    ``torch.compile``. ``launches`` is None where the tensors are new each step (sharded parameters).
    ``known``: ``identity(t)``, where the caller keeps it from step to step."""
    key = hit = None
    if launches is not None and launches.enabled and _laid_out(t):
        key = (kernel, c, identity(t) if known is None else known)
        hit = launches.calls.get(key)
        if hit is not None and hit[1] is not None:
            hit[1](t, s, c)
            return
    compiled(kernel, s.hp.device.type)(t, s, c)  # guarded (compiles on first use)
    if launches is not None and key is not None and hit is None:
        launches.calls[key] = ([x for xs in t for x in xs], _direct(kernel, t, s, c))
        while len(launches.calls) > launches.kept:  # the oldest tensors go (state replaced: not held on to)
            del launches.calls[next(iter(launches.calls))]


def _laid_out(t: NamedTuple) -> bool:
    """Whether every gradient in ``t`` has its weight's strides (the only layout a new gradient could
    change; else the guarded call)."""
    for name, weights in _GRADS.items():
        if name in t._fields:
            grads, ws = getattr(t, name), getattr(t, weights)
            if len(grads) != len(ws) or list(map(_stride, grads)) != list(map(_stride, ws)):
                return False
    return True


_stride = torch.Tensor.stride


def identity(t: NamedTuple) -> tuple:
    """Which tensors a call takes, except its gradients (new each step; their layout is checked apart):
    their ids."""
    return tuple(tuple(map(id, xs)) for name, xs in zip(t._fields, t, strict=True) if name not in _GRADS)


def _direct(kernel: Kernel, t: NamedTuple, s: NamedTuple, c: NamedTuple) -> Kernel | None:
    """The code ``torch.compile`` just ran for ``kernel(t, s, c)``: the entry of dynamo's cache whose
    guards pass on these arguments, as a plain function (it calls the compiled graph). None where there
    is none (compiling is off or failed: the kernel runs eagerly) or the cache cannot be read."""
    try:
        entries = torch._C._dynamo.eval_frame._debug_get_cache_entry_list(kernel.__code__)
        arguments = dict(zip(inspect.signature(kernel).parameters, (t, s, c), strict=True))
        for entry in entries:
            if entry.guard_manager.check(arguments):
                return types.FunctionType(entry.code, kernel.__globals__, kernel.__name__)
    except Exception:  # another PyTorch: the guarded path does the same
        return None
    return None
