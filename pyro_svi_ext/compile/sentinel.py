"""The sentinel: now and then a compiled graph runs beside the eager step instead of in
its place, on copies of everything it writes and on the same random draws, and the two
are compared. It sees what no guard can: a Python float or tensor from an enclosing
scope that the model reads and that changes, a monkeypatched distribution, a float
argument read through ``math``.

The eager step is the step taken, so a check adds no side effect (module state,
random stream and Python code run as in an eager step). A mismatch beyond the
verification tolerance (:func:`.verify.all_close`, :func:`.verify.update_close`) logs a
WARNING naming what differed, drops the graph (the next step traces again) and is
counted; after ``MAX_MISMATCHES`` the step runs eagerly for good.

When: each graph at its first and second use (dense early; a value that changes every
step shows at once), at the first ``NEW_VALUE_CHECKS`` calls whose float arguments
differ from the traced ones, then every ``ratio / BUDGET`` uses, where ``ratio`` is the
measured cost of a check (an eager step and a graph step) over a graph step: the
checks then take ``BUDGET`` of a long run's time (BLR: an eager step 50x a graph step,
a check every 5,000 steps).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from pyro_svi_ext.compile.layout import StepLayout
from pyro_svi_ext.compile.optim_plan import OptimPlan
from pyro_svi_ext.compile.tracer import random_state, set_random_state
from pyro_svi_ext.compile.verify import all_close, update_close

logger = logging.getLogger("pyro_svi_ext.compile.step")

#: share of a long run's time the checks may take
BUDGET = 0.01
#: uses of each graph checked whatever the cost
EARLY_USES = (1, 2)
#: calls with new float argument values checked, per graph
NEW_VALUE_CHECKS = 2
#: mismatches after which the step runs eagerly for good
MAX_MISMATCHES = 3


@dataclass
class Check:
    """A graph's run beside this step's eager one: what it produced, on copies."""

    key: tuple
    graph: object
    layout: StepLayout
    leaves: list
    loss: torch.Tensor
    grads: list  # the graph's gradients (loss-and-gradients graphs), else empty
    new_values: list  # what the graph wrote into its inputs (copies)
    rng_after: tuple
    devices: list
    names: list[str]
    grads_before: list = field(default_factory=list)
    eager_loss: float | None = None
    eager_grads: list = field(default_factory=list)


class Sentinel:
    """The schedule of one compiled step's checks and their timing."""

    def __init__(self) -> None:
        #: seconds of the latest eager step (loss and gradients), and of a graph step
        #: as the run sees it (wall time between checks over the graph steps taken, the
        #: user's loop included: nothing is timed per step)
        self.eager_seconds: float | None = None
        self.graph_seconds: float | None = None
        self.checks = 0
        self.mismatches = 0
        self._mark: tuple[float, int] | None = None

    @staticmethod
    def new_values_due(graph, leaves: list) -> bool:
        """Whether this use of ``graph`` is checked for its float arguments' new
        values (the caller checked ``graph.uses >= graph.next_check`` already)."""
        if graph.new_value_checks < NEW_VALUE_CHECKS and \
                tuple(leaves[i] for i in graph.layout.float_slots) != graph.traced_floats:
            graph.new_value_checks += 1
            return True
        return False

    def due(self, graph, leaves: list) -> bool:
        """Whether this use of ``graph`` (with these argument leaves) is checked."""
        graph.uses += 1
        return graph.uses >= graph.next_check or (
            bool(graph.layout.float_slots) and self.new_values_due(graph, leaves))

    def scheduled(self, graph, graph_steps: int) -> None:
        """After a check of ``graph`` (``graph_steps``: graph steps taken so far by the
        compiled step): when the next one is due."""
        self.checks += 1
        now = time.perf_counter()
        if self._mark is not None and graph_steps > self._mark[1]:
            self.graph_seconds = (now - self._mark[0]) / (graph_steps - self._mark[1])
        self._mark = (now, graph_steps)
        if self.eager_seconds and self.graph_seconds:
            ratio = (self.eager_seconds + self.graph_seconds) / self.graph_seconds
        else:
            ratio = 100.0
        graph.next_check = (graph.uses + 1 if graph.uses < max(EARLY_USES) else
                            graph.uses + max(1, math.ceil(ratio / BUDGET)))


def first_difference(check: Check, param_names: list[str], eager_new: list,
                     rng_now: tuple) -> str | None:
    """What differs between the graph's run and the eager step, in words (None: they
    agree within the verification tolerance)."""
    loss = torch.as_tensor(check.eager_loss, dtype=torch.float64)
    if not all_close([loss], [check.loss.detach().to(torch.float64)]):
        return f"the loss: {float(check.loss):.6g} compiled, {check.eager_loss:.6g} eager"
    for name, want, got in zip(param_names, check.eager_grads, check.grads, strict=False):
        if not all_close([want], [got]):
            return f"the gradient of param {name!r}"
    scale = max((float(g.abs().max()) for g in check.eager_grads if g.numel()), default=0.0)
    n_params = check.layout.n_params if check.layout.whole_step else 0
    for i, (name, want, got) in enumerate(zip(check.names, eager_new, check.new_values,
                                              strict=True)):
        close = (update_close(want, got, check.eager_grads[i], scale) if i < n_params
                 else all_close([want], [got]))
        if not close:
            return name
    if not (torch.equal(rng_now[0], check.rng_after[0]) and all(
            torch.equal(a, b) for a, b in zip(rng_now[1], check.rng_after[1], strict=True))):
        return "the random stream (the graph draws other numbers than the model now does)"
    return None


class SentinelChecks:
    """The sentinel's part of :class:`~pyro_svi_ext.compile.step.CompiledStep` (a mixin
    over its graphs, params, modules, report and options)."""

    def _start_check(self, key: tuple, graph, params: list, state: list, side: list,
                     leaves: list) -> None:
        """Run ``graph`` from the current random state on its inputs, keep what it made,
        then put back everything it wrote (saved before, copied back in place: the same
        tensors, so a graph captured for replay, e.g. a CUDA graph, is not captured
        again) and the random state: the eager step that follows starts where the graph
        did and draws the same numbers."""
        layout = graph.layout
        inputs = layout.inputs(params, state, side, leaves, self.modules.buffers())
        written = [inputs[i] for i in layout.written_inputs]
        devices = sorted({p.device.index for p in params if p.device.type == "cuda"})
        start = random_state(devices)
        with torch.no_grad():
            saved = [t.detach().clone() for t in written]
            outputs = graph.run(*inputs)
            new_values = [t.detach().clone() for t in written]
            if written:
                torch._foreach_copy_(written, saved)
            kept = [t.detach().clone() for t in outputs[:layout.kept]]  # pooled buffers
        after = random_state(devices)
        set_random_state(start, devices)
        grads = [] if layout.whole_step else kept[1:1 + layout.n_params]
        self._check = Check(key, graph, layout, leaves, kept[0], grads, new_values, after,
                            devices, self._written_names(layout),
                            [None if p.grad is None else p.grad.clone() for p in params])
        self._not_ready = True  # this step is the eager one

    def _written_names(self, layout: StepLayout) -> list[str]:
        names = []
        if layout.whole_step:
            names += [f"param {n!r}" for n in self.param_names]
            names += [f"optimizer state #{i}" for i in range(layout.n_written)]
        names += [f"param {n!r}" for n in self.side_names]
        return names + [f"buffer {n}" for n in self.modules.names()]

    def _eager_step_checked(self, args: tuple, kwargs: dict):
        """This step's eager loss and gradients (timed), noted for the pending check."""
        check = self._check
        with Stopwatch() as watch:
            result = self.elbo.loss_and_params(self.model, self.guide, args, kwargs)
        self.sentinel.eager_seconds = watch.seconds
        if check is not None:
            params = self._from_store(self.param_names)
            check.eager_loss = result.loss
            check.eager_grads = [
                (torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())
                - (0 if before is None else before)
                for p, before in zip(params, check.grads_before, strict=True)]
            if not check.layout.whole_step:
                self._finish_check()
        return result

    def after_update(self) -> None:
        """Called by SVI after the optimizer's update of an eager step: a pending check
        of a whole-step graph is compared now."""
        if self._check is not None and self._check.eager_loss is not None:
            self._finish_check()

    def _finish_check(self) -> None:
        check, self._check = self._check, None
        layout = check.layout
        params = self._from_store(self.param_names)
        # the optimizer's state as the eager update left it (ClippedAdam's decayed
        # learning rates live on the host: a fresh plan reads them)
        state = (OptimPlan(self._plan.optim, params).inputs
                 if layout.whole_step and self._plan is not None else [])
        inputs = layout.inputs(params, state, self._from_store(self.side_names),
                               check.leaves, self.modules.buffers())
        eager_new = [inputs[i] for i in layout.written_inputs]
        difference = first_difference(check, self.param_names, eager_new,
                                      random_state(check.devices))
        self.sentinel.scheduled(check.graph, self.report.graph_steps)
        self.report.checks = self.sentinel.checks
        if difference is None:
            return
        self.sentinel.mismatches += 1
        self.report.mismatches = self.sentinel.mismatches
        self.report.note("sentinel mismatch", difference)
        self.graphs.remove(check.key)
        floats = tuple(check.leaves[i] for i in layout.float_slots)
        if floats and floats != check.graph.traced_floats:
            self.valued_floats.update(layout.float_slots)  # it reads them some other way
        message = (f"{type(self.elbo).__name__}: the compiled step disagreed with the "
                   f"eager step at step {self.steps} ({difference} differs): the model "
                   "reads something that is not among the graph's inputs (a global float "
                   "or tensor that changes, a patched distribution, a float argument used "
                   "through math); tracing again")
        if self.sentinel.mismatches >= MAX_MISMATCHES:
            self._give_up(f"the compiled step disagreed with the eager step "
                          f"{self.sentinel.mismatches} times (last: {difference})",
                          cause="model")
        else:
            logger.warning(message)


class Stopwatch:
    """``with Stopwatch() as w: ...; w.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.started
