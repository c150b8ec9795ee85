"""Backends turn a traced step graph (a ``torch.fx.GraphModule`` over flat tensor inputs)
into a callable. Picked by name; third parties add theirs through the
``pyro_svi_ext_register_backends`` hook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Backend:
    """``compile(graph_module, example_inputs) -> callable`` under a name."""

    name: str
    compile: Callable
    description: str = ""


def _eager(gm, example_inputs):
    return gm


def _torchscript(gm, example_inputs):
    # A TorchScript trace of the step graph replays its first call exactly but not later
    # ones (random draws diverge), so it is refused rather than allowed to be wrong.
    raise NotImplementedError("the 'jit' (TorchScript) backend is not exact yet; use "
                              "'inductor' or 'eager'")


def _inductor(gm, example_inputs):
    import torch._inductor.config as inductor_config

    # random ops call aten's generators, so compiled steps draw what eager steps draw
    inductor_config.fallback_random = True
    try:  # compile the graph itself: our own guard replaces dynamo's (less per-call work)
        from torch._inductor.compile_fx import compile_fx
    except ImportError:  # pragma: no cover - older or newer torch layouts
        return torch.compile(gm, backend="inductor", dynamic=False)
    with torch.no_grad():
        return compile_fx(gm, [t.detach() for t in example_inputs])


BACKENDS: dict[str, Backend] = {
    b.name: b for b in (
        Backend("eager", _eager, "replay the traced graph op by op"),
        Backend("jit", _torchscript, "TorchScript (legacy; refused until exact)"),
        Backend("inductor", _inductor, "torch.compile / inductor: fused kernels"),
    )
}


def get_backend(name: str) -> Backend:
    """The backend registered as ``name`` (built-in or from a plugin);
    ``KeyError`` listing the known names otherwise."""
    from pyro_svi_ext import registry

    backends = {**BACKENDS, **registry.backends()}
    try:
        return backends[name.lower()]
    except KeyError:
        raise KeyError(f"no compile backend named {name!r}; known: {sorted(backends)}") from None
