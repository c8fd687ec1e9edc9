"""How a fused step's kernel is run: compiled once per structure, then called without per-step guards.

``torch.compile`` checks a few hundred guards on every call of a compiled function (the shape, stride,
dtype and aliasing of each of ~40 tensors, the constants) and dispatches through its frame hook: about
15 µs a step on a CPU, as much as the whole update of a small model's λ. A fused step's arguments do
not change structure from step to step: the weights, λ and the optimizer's state are the same tensors
every step, and only the gradients (whose layout is the weights') and the hyperparameter table are new.
So the kernel is compiled *ahead of time* (``aot_compile``) once per structure — the shapes, strides,
dtypes, devices and storage sharing of every argument, and the constants — and then called directly.

The guards are skipped only where they are known to hold: a call takes the direct path when its
tensors are the very tensors (by identity, kept alive by the cache) of a call whose structure was
checked — its guards run once, on that first call — and each gradient has its weight's strides (the
only layout a new gradient could change). Anything else — a new tensor, sharded (FSDP2) parameters whose
local blocks are new objects each step, a PyTorch without ``aot_compile`` — takes ``torch.compile``'s
guarded path, with the same result. ``HALOPRUNE_COMPILE=0`` runs the kernels eagerly.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

Kernel = Callable[..., None]

_COMPILED: dict[tuple[Kernel, str], Kernel] = {}
_AOT: OrderedDict[tuple, Kernel | None] = OrderedDict()  # (kernel, structure) → direct call; None: guarded
_AOT_SIZE = 64  # structures kept (least recently used dropped)
_GRADS = {"grads": "ws", "other_grads": "others"}  # a kernel's new-each-step tensors, and their weights


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


def _options() -> dict[str, Any]:
    # With dynamic=False dynamo's guards already pin every input's size and stride; inductor's own
    # per-call size asserts would repeat that check for each of ~30 tensors (~60 µs a step on CPU).
    return {"dynamic": False, "options": {"size_asserts": False}}


def _safe_compile(fn: Kernel) -> Kernel:
    compiled_fn = torch.compile(fn, **_options())
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
    """The direct calls of one plan's kernels: identity of the tensors → the kernel compiled for their
    structure. Held by the plan, so the tensors it keeps alive (their ids stay theirs) die with it."""

    def __init__(self) -> None:
        self.calls: dict[tuple, tuple[list[torch.Tensor], Kernel | None]] = {}
        self.enabled = _compiling()  # read once per plan, not per step


def launch(kernel: Kernel, launches: Launches | None, t: NamedTuple, s: NamedTuple, c: NamedTuple) -> None:
    """Run ``kernel(t, s, c)`` (``t``: the step's tensors; ``s``: its step values; ``c``: its constants):
    directly where the structure is known (see the module doc), else through ``torch.compile``.
    ``launches`` is None where the tensors are new each step (sharded parameters)."""
    device_type = s.hp.device.type
    if launches is None or not launches.enabled:
        compiled(kernel, device_type)(t, s, c)
        return
    fields = dict(zip(t._fields, t, strict=True))
    for name, weights in _GRADS.items():  # a gradient with other strides than its weight: guarded call
        if not all(g.stride() == w.stride() for g, w in zip(fields[name], fields[weights], strict=True)):
            compiled(kernel, device_type)(t, s, c)
            return
    key = (kernel, c, _identity(fields))
    hit = launches.calls.get(key)
    if hit is None:
        fn = _direct(kernel, t, s, c)
        hit = launches.calls[key] = ([x for xs in fields.values() for x in xs], fn)
    fn = hit[1]
    (fn or compiled(kernel, device_type))(t, s, c)


def _identity(fields: dict[str, list[torch.Tensor]]) -> tuple:
    """Which tensors a call takes, except its gradients: their ids, or the name of the gradient list a
    field stands in for (a placeholder the kernel does not read)."""
    grads = {id(fields[name]): name for name in _GRADS}
    return tuple(grads.get(id(xs)) or tuple(map(id, xs)) for name, xs in fields.items() if name not in _GRADS)


def _direct(kernel: Kernel, t: NamedTuple, s: NamedTuple, c: NamedTuple) -> Kernel | None:
    """The kernel compiled ahead of time for the structure of ``(t, s, c)`` (shared by every plan of the
    same structure), its guards checked on these arguments, then switched off; None where that is not
    possible (then the guarded path is used)."""
    structure = (kernel, c, _structure((t, s)))
    if structure in _AOT:
        _AOT.move_to_end(structure)
        return _AOT[structure]
    fn = None
    try:
        import torch._dynamo.config as dynamo_config

        with dynamo_config.patch(enable_aot_compile=True):  # behind a switch in PyTorch 2.13
            aot = torch.compile(kernel, fullgraph=True, **_options()).aot_compile
        compiled_fn = aot(((t, s, c), {}))
        if compiled_fn.guard_check(t, s, c):
            compiled_fn.disable_guard_check()
            fn = compiled_fn
    except Exception:  # no ahead-of-time compiling here (or no compiler): the guarded path does the same
        fn = None
    _AOT[structure] = fn
    if len(_AOT) > _AOT_SIZE:
        _AOT.popitem(last=False)
    return fn


def _structure(args: object) -> tuple:
    """What the compiled code depends on of ``args`` (nested tuples and lists of tensors and numbers):
    each tensor's shape, strides, storage offset, dtype, device, whether it requires grad, and which
    earlier argument's storage it shares (aliasing); each number's type and value."""
    storages: dict[int, int] = {}
    out: list[object] = []

    def walk(x: object) -> None:
        if isinstance(x, torch.Tensor):
            ptr = x.untyped_storage().data_ptr()
            out.append(
                (
                    tuple(x.shape),
                    x.stride(),
                    x.storage_offset(),
                    x.dtype,
                    x.device,
                    x.requires_grad,
                    storages.setdefault(ptr, len(storages)),
                )
            )
        elif isinstance(x, tuple | list):
            out.append(len(x))
            for y in x:
                walk(y)
        else:
            out.append((type(x), x))

    walk(args)
    return tuple(out)
