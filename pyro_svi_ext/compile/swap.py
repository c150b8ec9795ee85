"""Compiling in the background (the stage of
:class:`~pyro_svi_ext.compile.step.CompiledStep` that uses
:mod:`.background`): a traced graph is sent to a child process that fills inductor's
cache, an interim graph (the next backend of the chain) runs meanwhile, and the
compiled graph is checked and swapped in at the first step after the child ends."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from pyro_svi_ext.compile.background import (
    BackgroundCompile,
    cache_marker,
    load_portable,
    portable,
    threads_as,
)
from pyro_svi_ext.compile.layout import StepLayout, writing_in_place
from pyro_svi_ext.compile.matmul_choices import cpu_matmul_choices
from pyro_svi_ext.compile.tracer import Graph
from pyro_svi_ext.compile.tracing import Untraceable
from pyro_svi_ext.compile.verify import compile_checked

logger = logging.getLogger("pyro_svi_ext.compile.step")

#: backends whose compile runs in a child process (the slow ones); the others compile in
#: place
BACKGROUND_BACKENDS = ("inductor",)
#: graphs with more nodes than this compile in place when the cache already holds them
#: (loading a cached graph blocks the step: worth it only where the interim graph is
#: slow). Measured (2,000 steps from constructing SVI, 2 cores, warm cache): the HMM
#: K=4 T=100 (4,384 nodes) 12.1 s in place against 13.1 s with the interim graph (about
#: 4 ms a step); RenyiELBO with 8 sequential particles (1,691 nodes, 1.2 ms a step
#: interim) 5.4 s in place against 3.8 s; BLR (419 nodes) 2.4 s against 1.7 s. (The
#: limit was 1,000 while the batched interim graph of the particles was 60% slower.)
LARGE_GRAPH = 3000
#: compile processes at once per step object; a new shape beyond that runs eagerly
#: until one ends (a shape that changes on every call must not start a process each)
MAX_PENDING = 2


@dataclass
class Pending:
    """A graph compiling in the background, and what its check needs: the inputs as
    they were when it was traced (copies), the traced graph's outputs on them, and the
    random state they drew from and left."""

    job: BackgroundCompile
    graph: dict  # the portable graph the child compiles; rebuilt here at the swap
    layout: StepLayout
    had_grad: list[bool]
    inputs: list
    reference: tuple
    rng_state: tuple
    rng_after: tuple
    devices: list
    traced_at: int
    guards: object = None
    traced_floats: tuple = ()


class BackgroundCompiles:
    """The background stage of :class:`~pyro_svi_ext.compile.step.CompiledStep` (a
    mixin over its graphs, pending compiles, backends and report)."""

    def _as_a_child_builds_it(self, production: torch.fx.GraphModule
                              ) -> torch.fx.GraphModule:
        """For a backend that may compile in a child: the graph as the child rebuilds
        it from :func:`.background.portable` data, so a blocking compile and a
        background one compile one graph into the same kernels (the FX graph with its
        metadata gave inductor other fusions: an Adam state off in its last bit)."""
        if self.backend.name not in BACKGROUND_BACKENDS:
            return production
        try:
            return load_portable(self._portable(production))
        except TypeError:  # an op a child could not be sent
            return production

    @staticmethod
    def _portable(production: torch.fx.GraphModule) -> dict:
        """The portable data of the graph a compile child builds, with the CPU matmul
        choices made (:mod:`.matmul_choices`): the rules read the nodes' recorded
        tensors, which portable data drops, so no background compile (the default)
        made them. Measured, one thread, steady step: BLR N=10,000 88.5 us with them,
        114 us without."""
        return portable(cpu_matmul_choices(production))

    def _trace_and_submit(self, key: tuple, layout: StepLayout, inputs: list, call: tuple,
                          plan):
        """Trace the step, take this step with the traced graph (checked against the
        eager step, as when compiling in place), start the backend's compile in a child
        process and compile an interim graph here. Returns ``(graph, outputs)``; the
        graph has no compiled run when the caller gets the traced step's outputs.
        Compiles in place instead for a graph that cannot be sent to a child, or a large
        one the cache already holds."""
        traced = self._traced_step(layout, inputs, call, plan)
        production = writing_in_place(traced["gm"], layout)
        try:
            data = self._portable(production)
        except TypeError as why:  # an op a child process cannot be sent: compile here
            logger.info("%s: compiling in place (%s)", type(self.elbo).__name__, why)
            data = None
        marker = None if data is None else cache_marker(self.backend.name, data, inputs)
        if data is None or (len(data["nodes"]) > LARGE_GRAPH and marker.exists()):
            # in place: unsendable, or a large graph the cache already holds
            graph = self._compile_here(layout, inputs, traced, production if data is None
                                       else load_portable(data))
            self.graphs.put(key, graph)
            return graph, traced["reference"]
        copies = [t.detach().clone() if torch.is_tensor(t) else t for t in inputs]
        job = BackgroundCompile(self.backend.name, data, copies, marker)
        self.pending[key] = Pending(job, data, layout, traced["had_grad"],
                                    copies, traced["reference"], traced["rng_state"],
                                    traced["rng_after"], traced["devices"], self.steps,
                                    traced["guards"])
        self.report.note("compiling in the background", f"{len(data['nodes'])} nodes")
        interim = self._interim(layout, inputs, traced, production)
        if interim is not None:
            self.graphs.put(key, interim)
        self._commit(layout, inputs, traced["new_values"])
        return Graph(None, layout, traced["had_grad"], traced["guards"]), traced["reference"]

    def _interim(self, layout: StepLayout, inputs: list, traced: dict,
                 production: torch.fx.GraphModule) -> Graph | None:
        """A graph for the steps while inductor compiles in the background: the next
        backend of the chain (TorchScript under ``"auto"``), compiled here (0.2-0.4 s on
        BLR and the GMM, about 0.35 ms a step after), checked like any graph; None when
        there is no other backend or it fails (then those steps are eager)."""
        rest = [b for b in self.backends[1:] if b.name != "eager"]
        if not rest:
            return None
        started = time.perf_counter()
        try:
            run, backend = compile_checked(
                rest, production, inputs, layout,
                traced["reference"], traced["devices"], self.jit_options,
                lambda m: logger.info("%s: interim graph: %s", type(self.elbo).__name__, m),
                rng_state=traced["rng_state"], quiet=True, rng_after=traced["rng_after"])
        except Untraceable as why:
            logger.info("%s: no interim graph (%s)", type(self.elbo).__name__, why)
            self.report.note("no interim graph", str(why))
            return None
        logger.info("%s: interim graph compiled with %r while inductor compiles",
                    type(self.elbo).__name__, backend)
        self.report.compiled(backend, time.perf_counter() - started, in_background=False)
        return Graph(run, layout, traced["had_grad"], traced["guards"])

    def _swap_in(self, key: tuple, pending: Pending) -> Graph | None:
        """Compile the graph here from the cache the child process filled, check it
        against its traced graph (the check draws random numbers: this thread) and keep
        it; falls through the other backends, compiled here, if the child failed. None
        after giving up (eager for good)."""
        del self.pending[key]
        failure = pending.job.outcome()
        failed = ({pending.job.name: RuntimeError(f"compile process failed: {failure}")}
                  if failure else None)
        try:
            with threads_as(pending.job.threads):  # the child's count: a cache hit
                run, backend = compile_checked(
                    self.backends, load_portable(pending.graph), pending.inputs,
                    pending.layout,
                    pending.reference, pending.devices, self.jit_options,
                    lambda m: self._notify(f"{type(self.elbo).__name__}: {m}", 9),
                    failed=failed, rng_state=pending.rng_state, rng_after=pending.rng_after)
        except Untraceable as why:
            self._give_up(str(why), why.where, why.cause or "pyro_svi_ext")
            return None
        logger.info("%s: compiled the %s with backend %r in the background in %.2f s "
                    "(graph %d), in use from step %d (traced at step %d)",
                    type(self.elbo).__name__,
                    "whole SVI step" if pending.layout.whole_step else "loss and gradients",
                    backend, pending.job.seconds, self.compiles, self.steps + 1,
                    pending.traced_at + 1)
        graph = Graph(run, pending.layout, pending.had_grad, pending.guards,
                      pending.traced_floats)
        self.graphs.put(key, graph)
        self.swaps.append((self.steps + 1, pending.job.seconds))
        self.report.compiled(backend, pending.job.seconds, in_background=True)
        self.report.note("swapped in", f"traced at step {pending.traced_at + 1}")
        return graph

    def wait_for_compiles(self, timeout: float | None = None) -> bool:
        """Block until the graphs compiling in the background are ready (they are
        swapped in at the next step); whether all ended within ``timeout`` seconds."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        for pending in list(self.pending.values()):
            left = None if deadline is None else max(0.0, deadline - time.perf_counter())
            if not pending.job.wait(left):
                return False
        return True
