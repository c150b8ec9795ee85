"""Backends turn a traced step graph (a ``torch.fx.GraphModule`` over flat tensor inputs)
into a callable. Picked by name; third parties add theirs through the
``pyro_svi_ext_register_backends`` hook."""

from __future__ import annotations

import warnings
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


_JIT_WARNED = []


def _torchscript(gm, example_inputs):
    if not _JIT_WARNED:
        _JIT_WARNED.append(True)
        warnings.warn("the 'jit' backend uses TorchScript, deprecated in current torch; it is "
                      "kept as the legacy path: prefer 'inductor'", FutureWarning, stacklevel=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(gm, tuple(example_inputs), check_trace=False)


def _inductor(gm, example_inputs):
    import torch._inductor.config as inductor_config

    # random ops call aten's generators, so compiled steps draw what eager steps draw
    inductor_config.fallback_random = True
    return torch.compile(gm, backend="inductor", dynamic=False)


BACKENDS: dict[str, Backend] = {
    b.name: b for b in (
        Backend("eager", _eager, "replay the traced graph op by op"),
        Backend("jit", _torchscript, "TorchScript (legacy)"),
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
