"""A compiled step replayed as one CUDA graph (the ``"cudagraphs"`` backend): one launch
per step instead of one per kernel, which is most of a small model's step on a GPU.

Inductor's own CUDA graphs (``torch.compile(mode="reduce-overhead")``) skip a graph
that writes its inputs in place ("skipping cudagraphs due to mutated inputs"), and a
whole SVI step writes its params and optimizer state in place; :class:`GraphReplay`
captures the step itself and keeps those writes.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

import torch

from pyro_svi_ext.compile.graph_passes import is_random

logger = logging.getLogger(__name__)

#: a tensor's version counter (torch's: it counts the in-place writes to the tensor)
_version_of = torch.Tensor._version.__get__


def replayed_as_cuda_graph(compile_: Callable, gm, example_inputs,
                           capture: Callable | None = None) -> Callable:
    """``compile_(gm, example_inputs)`` (a backend's compile of a step graph), run as a
    :class:`GraphReplay` when every input is on one CUDA device and no random op draws
    on the CPU (:func:`cuda_graph_refusal`; else it is returned as it is, with a log
    record saying why). Inductor's own CUDA graphs (``mode="reduce-overhead"``) skip a
    graph that writes its inputs in place, which a whole SVI step does (params,
    optimizer state); this replay copies nothing back and keeps those writes.
    ``capture``: how a graph is captured (tests pass a stand-in for CUDA)."""
    reason = cuda_graph_refusal(gm, example_inputs) if capture is None else None
    written = mutated_inputs(gm)
    run = compile_(gm, example_inputs)
    if reason is not None:
        logger.info("no CUDA graph for this step: %s", reason)
        return run
    return GraphReplay(run, written, capture or capture_cuda_graph)


def cuda_graph_refusal(gm: torch.fx.GraphModule, example_inputs) -> str | None:
    """Why ``gm`` cannot be replayed as a CUDA graph (None: it can). A captured graph
    replays device work only: a random op on the CPU would give its captured draws on
    every replay, and a CPU input would be read once, at the capture."""
    for node in gm.graph.nodes:
        value = node.meta.get("val")
        if (node.op == "call_function" and is_random(node) and torch.is_tensor(value)
                and value.device.type != "cuda"):
            return f"the random op {node.target} draws on {value.device}"
    devices = {t.device for t in example_inputs if torch.is_tensor(t)}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        return f"its inputs are on {sorted(map(str, devices))}, not on one CUDA device"
    if not torch.cuda.is_available():  # pragma: no cover - CUDA tensors without CUDA
        return "CUDA is not available"
    return None


def mutated_inputs(gm: torch.fx.GraphModule) -> frozenset[int]:
    """Positions of the placeholders ``gm`` writes in place (``copy_`` of a step's new
    values, any other in-place op), directly or through a view of them."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    base = {node: i for i, node in enumerate(placeholders)}
    written = set()
    for node in gm.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None:
            continue
        args = list(node.args)
        if schema.returns and schema.returns[0].alias_info is not None and args \
                and args[0] in base:  # a view (or in-place op) of an input: same storage
            base[node] = base[args[0]]
        for argument, value in zip(schema.arguments, args, strict=False):
            info = argument.alias_info
            if info is not None and info.is_write and value in base:
                written.add(base[value])
    return frozenset(written)


def capture_cuda_graph(run: Callable, inputs: list) -> tuple[Callable, tuple]:
    """``(replay, outputs)``: ``run(*inputs)`` captured as a CUDA graph (not run:
    ``replay()`` runs it, writing ``outputs``). One warm-up call on copies of the inputs
    on a side stream first (torch's advice: lazy initializations happen outside the
    capture), with the random state put back; the capture synchronizes the device once."""
    device = inputs[0].device
    torch.cuda.synchronize(device)
    scratch = [t.clone() for t in inputs]
    with torch.random.fork_rng(devices=[device]), torch.cuda.stream(torch.cuda.Stream(device)):
        run(*scratch)
    torch.cuda.synchronize(device)
    del scratch
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        outputs = run(*inputs)
    return graph.replay, tuple(outputs)


class GraphReplay:
    """A compiled step run by replaying one captured CUDA graph of it: one launch per
    step instead of one per kernel, which is most of a small model's step on a GPU.

    The first ``warmup`` calls run the step as it is; the next one captures it on that
    call's inputs and replays it. A captured graph reads and writes fixed memory:

    - an input the step writes (params, optimizer state, decaying averages) is used in
      place; when a call passes another tensor there (params loaded from a
      checkpoint), the step is captured again on it;
    - any other input (data, learning rates) is read from a copy made at the capture,
      refreshed when a call passes another tensor or the same one changed in place
      (its version counter); nothing of the caller's is written;
    - outputs (the loss, gradients) are cloned: the next replay overwrites the graph's.

    Shapes are the graph's (the compiled step's guard compiles another graph for
    another shape). A capture that fails leaves the step running uncaptured, with a
    log record saying why.
    """

    def __init__(self, run: Callable, written: frozenset[int], capture: Callable,
                 warmup: int = 2):
        self.run, self.written, self.capture, self.warmup = run, written, capture, warmup
        self.calls = 0
        #: how many captures were made
        self.captures = 0
        #: why the step runs uncaptured for good (a failed capture), else None
        self.reason: str | None = None
        self._replay: Callable | None = None
        self._outputs: tuple = ()
        self._buffers: list = []
        self._sources: list = []  # weak references to what each read-only buffer holds
        self._versions: list = []

    def __call__(self, *inputs):
        if self._replay is not None and any(inputs[i] is not self._buffers[i]
                                            for i in self.written):
            self._replay = None  # a written input is another tensor: capture again
        if self._replay is None:
            self.calls += 1
            if self.reason is not None or self.calls <= self.warmup or not self._capture(inputs):
                return self.run(*inputs)
        else:
            self._refresh(inputs)
        self._replay()
        return tuple(o.clone() for o in self._outputs)

    def _capture(self, inputs: tuple) -> bool:
        self._buffers = [t if i in self.written else t.clone() for i, t in enumerate(inputs)]
        self._sources = [weakref.ref(t) for t in inputs]
        self._versions = [_version_of(t) for t in inputs]
        try:
            self._replay, self._outputs = self.capture(self.run, self._buffers)
        except Exception as err:  # e.g. an op that synchronizes: run it uncaptured
            self.reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            logger.info("no CUDA graph for this step: the capture failed (%s)", self.reason)
            self._replay, self._buffers = None, []
            return False
        self.captures += 1
        return True

    def _refresh(self, inputs: tuple) -> None:
        """Copy into the read-only buffers the inputs that are new or changed."""
        for i, t in enumerate(inputs):
            if i in self.written:
                continue
            if self._sources[i]() is not t or self._versions[i] != _version_of(t):
                self._buffers[i].copy_(t)
                self._sources[i], self._versions[i] = weakref.ref(t), _version_of(t)
