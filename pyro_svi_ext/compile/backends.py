"""Backends turn a traced step graph (a ``torch.fx.GraphModule`` over flat tensor inputs)
into a callable. Picked by name; third parties add theirs through the
``pyro_svi_ext_register_backends`` hook."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from pyro_svi_ext.compile.cuda_graphs import replayed_as_cuda_graph
from pyro_svi_ext.compile.environment import environment_kept
from pyro_svi_ext.compile.graph_passes import (
    copy_graph,
    fewer_ops,
    without_bool_lists,
    without_values,
)
from pyro_svi_ext.compile.matmul_choices import cpu_matmul_choices


@dataclass(frozen=True)
class Backend:
    """``compile(graph_module, example_inputs) -> callable`` under a name."""

    name: str
    compile: Callable
    description: str = ""


def _eager(gm, example_inputs):
    return without_values(fewer_ops(gm))


_LEGACY_NOTICE = [False]


class LegacyBackendWarning(UserWarning):
    """The ``"jit"`` (TorchScript) backend was chosen: deprecated in torch, said once."""


def _torchscript(gm, example_inputs, jit_options: dict | None = None):
    """``torch.jit.trace`` of the graph: the legacy path (TorchScript is deprecated in
    current torch). Says so once per process, and keeps torch's own deprecation
    warnings from reaching the user on every compile. ``jit_options`` (an ELBO's
    ``jit_options``) are passed to ``torch.jit.trace``, over ``check_trace=False``."""
    if not _LEGACY_NOTICE[0]:
        _LEGACY_NOTICE[0] = True
        warnings.warn("pyro_svi_ext: the 'jit' compile backend (TorchScript) is the legacy "
                      "path; 'inductor' is the default and usually faster",
                      LegacyBackendWarning, stacklevel=2)
    inputs = [t.detach().clone() for t in example_inputs]  # tracing runs the graph once
    with warnings.catch_warnings(), torch.random.fork_rng(), torch.no_grad():
        warnings.simplefilter("ignore")
        return Unoptimized(torch.jit.trace(without_bool_lists(fewer_ops(gm)), inputs,
                                           **{"check_trace": False, **(jit_options or {})}))


class Unoptimized:
    """A TorchScript module run without the graph executor's profiling and
    optimization passes. Measured on 2 cores (interim graphs, one thread): they made
    the first two calls cost 0.35 + 0.39 s on the enumerated HMM (2,638 nodes) and
    0.09 + 0.04 s on BLR, and the steps after were no faster (HMM 8.9 ms optimized,
    8.8 ms not; BLR 1.61 against 1.47 ms)."""

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        self.module = module

    def __call__(self, *inputs):
        with torch.jit.optimized_execution(False):
            return self.module(*inputs)


def _inductor(gm, example_inputs):
    import torch._inductor.config as inductor_config

    try:  # compile the graph itself: our own guard replaces dynamo's (less per-call work)
        from torch._inductor.compile_fx import compile_fx
    except ImportError:  # pragma: no cover - older or newer torch layouts
        return torch.compile(gm, backend="inductor", dynamic=False)
    on_cpu = all(t.device.type == "cpu" for t in example_inputs)
    options = {
        # random ops call aten's generators, so compiled steps draw what eager steps draw
        "fallback_random": True,
        # on CPU, a C++ wrapper calls the kernels (about 20% less time per small step)
        "cpp_wrapper": on_cpu,
        # the generated code checks each fallback op's output layout on every call
        # (building a std::stringstream each time: 10-20% of a small step); shapes are
        # static here, and the compiled step is checked against the traced graph once
        "size_asserts": False,
        # on CPU, one pooled allocation per call instead of one per buffer (malloc was a
        # quarter of a RenyiELBO step with 8 sequential particles); CUDA's caching
        # allocator makes buffers cheap already
        "memory_planning": on_cpu,
        # torch 2.13's masked vectorization of tail loops writes out of bounds on some
        # graphs (enumerated HMMs with 3 or 4 states: wrong results, or a corrupted heap
        # and an aborted process with one allocation per buffer); tails run scalar
        "cpp.enable_loop_tail_vec": False,
    }
    gm = without_values(torch.fx.GraphModule(gm, copy_graph(cpu_matmul_choices(gm).graph)))
    with inductor_config.patch(options), torch.no_grad(), _quiet_inductor_notes(), \
            _recursion_limit_for(gm), environment_kept(), \
            _static_fake_context(example_inputs) as fake_inputs:
        return compile_fx(gm, fake_inputs)


@contextmanager
def _recursion_limit_for(gm):
    """Inductor's memory planner recurses about once per 10 graph nodes (an HMM unrolled
    over T=100, 8,000 nodes: 825 frames deep, over Python's limit when called from a
    deep stack); lift the limit while compiling, then put it back."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, min(_MAX_RECURSION, 3000 + len(gm.graph.nodes))))
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


_MAX_RECURSION = 30000


@contextmanager
def _quiet_inductor_notes():
    """Inductor logs a warning for each op its C++ wrapper calls through a proxy
    (e.g. Dirichlet sampling); that is how such ops run, not a problem to report."""
    logger = logging.getLogger("torch._inductor.ir")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _static_fake_context(example_inputs):
    """Fake copies of the inputs under a tracing context whose fake mode has a (static)
    shape environment: what inductor's on-disk graph cache needs to be used at all, so
    a later process compiles the same step from the cache."""
    try:
        from torch._guards import TracingContext, tracing
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import ShapeEnv
    except ImportError:  # pragma: no cover - other torch layouts: no cache, same graph
        yield [t.detach() for t in example_inputs]
        return
    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    fake = [mode.from_tensor(t.detach(), static_shapes=True) for t in example_inputs]
    with tracing(TracingContext(mode)):
        yield fake


def _inductor_cuda_graphs(gm, example_inputs):
    """Inductor's step, replayed as one CUDA graph where the step allows it
    (:func:`.cuda_graphs.replayed_as_cuda_graph`); elsewhere (CPU) inductor's step."""
    return replayed_as_cuda_graph(_inductor, gm, example_inputs)


#: what ``backend="auto"`` tries, in order, keeping the first that compiles the step
#: and reproduces the traced graph's numbers
AUTO_BACKENDS = ("inductor", "jit", "eager")

BUILTIN_BACKENDS: dict[str, Backend] = {
    b.name: b for b in (
        Backend("eager", _eager, "replay the traced graph op by op"),
        Backend("jit", _torchscript, "TorchScript trace of the graph (legacy)"),
        Backend("inductor", _inductor, "torch.compile / inductor: fused kernels"),
        Backend("cudagraphs", _inductor_cuda_graphs,
                "inductor, the step replayed as one CUDA graph (CUDA; static shapes)"),
    )
}
#: the name tests and older code used for the built-in table
BACKENDS = BUILTIN_BACKENDS

#: plugins' backends (name -> Backend), supplied by the plugin registry, which sits
#: above this layer and hands its lookup down at import (no import points up)
_plugin_backends: list[Callable[[], dict]] = [dict]


def set_plugin_backends(source: Callable[[], dict]) -> None:
    """Where :func:`get_backend` finds plugins' backends (the plugin registry's)."""
    _plugin_backends[0] = source


def get_backend(name: str) -> Backend:
    """The backend registered as ``name`` (built-in, or a plugin's: plugins are loaded
    then if they were not yet); ``KeyError`` listing the known names otherwise."""
    backend = BUILTIN_BACKENDS.get(name.lower())
    if backend is not None:
        return backend
    backends = {**BUILTIN_BACKENDS, **_plugin_backends[0]()}
    try:
        return backends[name.lower()]
    except KeyError:
        raise KeyError(f"no compile backend named {name!r}; known: {sorted(backends)}") from None
