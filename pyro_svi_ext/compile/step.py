"""A compiled SVI step: an estimator's step traced once into a flat graph, run on later
steps.

The first call runs the estimator eagerly (validation, param creation, optimizer state)
and keeps what it learnt: the params touched, the modules run and the estimator's
:class:`~pyro_svi_ext.protocol.CompileFacts`. Later calls record (:mod:`.tracer`: one
real run) one of two graphs (laid out by :class:`~pyro_svi_ext.compile.layout.StepLayout`):

- the whole SVI step (with a supported optimizer, see :mod:`.optim_plan`): loss,
  gradients and the optimizer's update; new params, optimizer state, side state and
  module buffers are written into their tensors in place, and the graph returns
  ``(loss,)``;
- loss and gradients (any other optimizer): returns ``(loss, *grads)``, side state and
  buffers written in place; the update then runs eagerly.

All updates of params, optimizer and side state are masked by ``isfinite(loss)``: a
step with a non-finite loss changes none of them. A model whose Python control flow
depends on tensor values cannot be traced: that is detected and the step falls back to
the eager estimator (or raises, by option). The guard (:mod:`.guard`) compares each call
with the traced one; a new graph is verified (:mod:`.verify`) before it is used; the
sentinel (:mod:`.sentinel`) checks graphs against the eager step now and then;
:mod:`.report` keeps what happened. Compiling in the background is :mod:`.swap`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable

import pyro
import pyro.optim
import torch

from pyro_svi_ext.compile.arguments import flatten, leaf_names
from pyro_svi_ext.compile.backends import AUTO_BACKENDS, Backend, get_backend
from pyro_svi_ext.compile.guard import GraphCache, describe_change, global_state, step_key
from pyro_svi_ext.compile.layout import StepLayout
from pyro_svi_ext.compile.module_state import ModuleState, modules_that_run
from pyro_svi_ext.compile.optim_plan import TRANSIENT, OptimPlan, unsupported_reason
from pyro_svi_ext.compile.report import CompileReport
from pyro_svi_ext.compile.sentinel import Sentinel, SentinelChecks, Stopwatch
from pyro_svi_ext.compile.swap import (
    BACKGROUND_BACKENDS,
    MAX_PENDING,
    BackgroundCompiles,
    Pending,
)
from pyro_svi_ext.compile.tracer import Graph, NewModules, StepTracing
from pyro_svi_ext.compile.tracing import NewParams, Untraceable
from pyro_svi_ext.errors import NonFiniteLossError
from pyro_svi_ext.protocol import StepResult
from pyro_svi_ext.pyro_compat import store_tensors

logger = logging.getLogger(__name__)

#: names tests and older code imported from here
_Graph = Graph


#: graphs traced, in multiples of ``cache_size``, after which a step whose inputs keep
#: changing runs eagerly for good (each trace costs several eager steps)
THRASH = 4


def sharing_memory(names: list[str], tensors: list[torch.Tensor]) -> tuple | None:
    """The names of two distinct param tensors over the same memory, or None."""
    seen: dict[int, str] = {}
    for name, tensor in zip(names, tensors, strict=True):
        if tensor.numel() == 0 or tensor.device.type == "meta":
            continue
        address = tensor.untyped_storage().data_ptr()
        if address in seen:
            return seen[address], name
        seen[address] = name
    return None


class StructureChangedError(RuntimeError):
    """A compiled step was called with inputs it was not compiled for (and recompiling
    is disabled), or the model cannot be compiled at all."""


class RecompileWarning(RuntimeWarning):
    """A compiled step met inputs of another shape (or dtype, device, non-tensor value,
    module mode) than it was compiled for, and compiles again; the message names what
    changed."""


class CompiledStep(StepTracing, BackgroundCompiles, SentinelChecks):
    """The compiled step of one ``(model, guide)`` for an estimator (the protocol of
    :mod:`pyro_svi_ext.protocol`); what :class:`~pyro_svi_ext.SVI` calls.

    :param elbo: the estimator.
    :param backend: backend name (``"auto"``, ``"eager"``, ``"jit"``, ``"inductor"`` or a
        plugin's).
    :param on_change: ``"recompile"`` (keep up to ``cache_size`` graphs) or ``"raise"``
        (:class:`StructureChangedError` naming what changed).
    :param on_dynamic: ``"eager"`` (warn once, run the eager estimator) or ``"raise"``
        when the model cannot be traced (e.g. it branches on tensor values).
    :param jit_options: keyword arguments of ``torch.jit.trace`` for the ``"jit"`` backend.
    :param ignore_warnings: silence the warnings raised while the step is traced, and log
        fallbacks instead of warning.
    :param background_compile: compile inductor graphs in a child process while an
        interim graph (the next backend of the chain) or the eager step keeps training;
        the graph is checked and swapped in at the first step after it is ready
        (``False``: wait for the compile, as on the step after the first). The results
        are the interim or eager step's until the swap, and the compiled graph's after
        it (the same up to float rounding).
    """

    def __init__(self, elbo, model: Callable, guide: Callable, backend: str = "auto",
                 on_change: str = "recompile", on_dynamic: str = "eager", cache_size: int = 8,
                 jit_options: dict | None = None, ignore_warnings: bool = False,
                 background_compile: bool = True):
        self.check_options(backend, on_change, on_dynamic)
        self.elbo, self.model, self.guide = elbo, model, guide
        #: backends to try, in order ("auto": inductor, then TorchScript, then replay)
        self.backends: list[Backend] = ([get_backend(b) for b in AUTO_BACKENDS]
                                        if backend == "auto" else [get_backend(backend)])
        self.on_change = on_change
        self.on_dynamic = on_dynamic
        self.jit_options = jit_options
        self.ignore_warnings = ignore_warnings
        self.graphs = GraphCache(cache_size)
        self.param_names: list[str] | None = None
        #: other param-store names of a param tensor (``pyro.module`` of one network
        #: under two names): name -> its position in ``param_names``
        self.aliases: dict[str, int] = {}
        #: what the first eager step learnt (structure to replay, side state)
        self.facts = None
        self.dynamic_reason: str | None = None
        #: why the optimizer update runs eagerly (None while it is compiled)
        self.optim_reason: str | None = None
        #: graphs traced so far (each a compile, in the background or not)
        self.compiles = 0
        self.background_compile = background_compile
        #: graphs compiling in the background, by step key
        self.pending: dict[tuple, Pending] = {}
        #: steps taken through this object (eager, traced or compiled)
        self.steps = 0
        #: ``(step, seconds)`` per graph compiled in the background: the step it was
        #: first used at, and how long its compile took
        self.swaps: list[tuple[int, float]] = []
        #: the last _run found its graph still compiling: the step runs eagerly
        self._not_ready = False
        self._plan: OptimPlan | None = None
        self._refused: tuple | None = None  # (optim, reason) for a permanent refusal
        #: the modules the step runs (found by the eager first step and each trace)
        self.modules = ModuleState([])
        #: positions among the arguments' leaves of float arguments keyed by value (a
        #: trace read them as plain numbers, or a comparison on them changed side)
        self.valued_floats: set[int] = set()
        #: what happened, for :meth:`~pyro_svi_ext.SVI.compile_report`
        self.report = CompileReport(type(elbo).__name__)
        #: when graphs are checked against the eager step, and the pending check
        self.sentinel = Sentinel()
        self._check = None

    @staticmethod
    def check_options(backend: str, on_change: str = "recompile", on_dynamic: str = "eager",
                      **_) -> None:
        """``ValueError`` for an unknown option value, ``KeyError`` for an unknown
        backend."""
        if on_change not in ("recompile", "raise") or on_dynamic not in ("eager", "raise"):
            raise ValueError("on_change must be 'recompile' or 'raise'; on_dynamic 'eager' or "
                             f"'raise'; got {on_change!r}, {on_dynamic!r}")
        if backend != "auto":
            get_backend(backend)

    @property
    def backend(self) -> Backend:
        """The backend new graphs are compiled with."""
        return self.backends[0]

    @property
    def side_names(self) -> list[str]:
        return list(self.facts.side_state) if self.facts is not None else []

    # --- a call: its key, its graph -----------------------------------------------------
    def _key(self, params: list, side: list, leaves: list, spec, plan) -> tuple:
        return step_key(params, side, leaves, spec, plan,
                        (self.modules.key(), global_state()), self.valued_floats)

    def _float_slots(self, leaves: list) -> tuple[int, ...]:
        return tuple(i for i, a in enumerate(leaves)
                     if type(a) is float and i not in self.valued_floats)

    def _run(self, params: list, side: list, args: tuple, kwargs: dict, plan,
             checked: bool = True):
        """The graph and its outputs for this call (compiling and verifying a new graph),
        or ``(None, None)`` when this step runs eagerly: after falling back for good
        (``dynamic_reason``), while its graph compiles with no interim graph, or when the
        sentinel checks the graph beside it (``checked=False``: never; a step that must
        not read the host, ``step_tensor``)."""
        leaves, spec = flatten(args, kwargs)
        key = step_key(params, side, leaves, spec, plan,
                       (self.modules.key(), global_state()), self.valued_floats)
        if self.pending:  # a background compile that has ended replaces the interim graph
            pending = self.pending.get(key)
            if pending is not None and pending.job.done() and \
                    self._swap_in(key, pending) is None:
                return None, None
        graph = self.graphs.get(key)
        if graph is not None and graph.layout.float_slots and graph.guards.checks and \
                not graph.guards.hold([leaves[i] for i in graph.layout.float_slots]):
            # a float argument took the other side of a comparison the trace made: those
            # arguments are keyed by value from now on
            self.valued_floats.update(graph.layout.float_slots)
            key = self._key(params, side, leaves, spec, plan)
            graph = self.graphs.get(key)
        state = plan.inputs if plan is not None else []
        self._check = None  # one that was never compared (its eager step raised)
        if graph is not None:
            graph.uses += 1
            if checked and (graph.uses >= graph.next_check or (
                    graph.layout.float_slots and self.sentinel.new_values_due(graph, leaves))):
                self._start_check(key, graph, params, state, side, leaves)
                return None, None
            inputs = graph.layout.inputs(params, state, side, leaves, self.modules.buffers())
            grad_was = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)  # the graph computes its gradients itself
            self.report.graph_steps += 1
            try:
                return graph, graph.run(*inputs)
            finally:
                torch._C._set_grad_enabled(grad_was)
        if key in self.pending or (len(self.pending) >= MAX_PENDING and
                                   self.background_compile):
            # compiling, and no interim graph; or enough compiles running already (inputs
            # whose shape changes on every call): this step is eager
            self._not_ready = True
            return None, None
        if self.graphs or self.pending:
            newest = self.graphs.newest_key() if self.graphs else next(reversed(self.pending))
            change = describe_change(newest, key, self.param_names, self.side_names,
                                     [type(m).__name__ for m in self.modules.modules],
                                     self.modules.names(), leaf_names(args, kwargs))
            if self.on_change == "raise":
                raise StructureChangedError(change)
            if self.compiles >= THRASH * self.graphs.size:
                self._give_up(f"{self.compiles} graphs traced, the inputs change on almost "
                              f"every call (the last change: {change})", cause="model")
                return None, None
            self.report.note("compiling again", change)
            self._notify(f"{type(self.elbo).__name__}: compiling again: {change} (graph "
                         f"{self.compiles + 1}; pass those inputs with a fixed shape, or "
                         "on_change='raise' to stop here)", 6, RecompileWarning)
        call = (args, kwargs, leaves, spec)
        try:
            return self._new_graph(key, params, side, call, plan)
        except NewModules as new:  # modules the first step did not run: trace again
            self.modules = ModuleState([*self.modules.modules, *new.found.values()])
            key = self._key(params, side, leaves, spec, plan)
            try:
                return self._new_graph(key, params, side, call, plan)
            except NewModules:
                self._give_up("the modules it runs change from one run to the next",
                              cause="model")
        except NewParams as why:  # this step runs eagerly and records them
            self.report.note("new params: eager step, then traced again", str(why))
            self.param_names = None
        except Untraceable as why:
            self._give_up(str(why), why.where, why.cause or "pyro_svi_ext")
        return None, None

    def _new_graph(self, key: tuple, params: list, side: list, call: tuple, plan):
        """Trace, check and compile the graph for ``key`` (in the background where the
        backend is slow); ``(graph, traced outputs)``. A graph that read a float
        argument as a plain number is kept under a key holding that argument's value."""
        leaves, spec = call[2], call[3]
        shared = sharing_memory(self.param_names, params)
        if shared is not None:
            why = Untraceable(f"params {shared[0]!r} and {shared[1]!r} share memory (one "
                              "was made from the other without a copy): the eager step "
                              "updates that memory once for each, which a compiled graph "
                              "does not")
            why.cause = "model"
            raise why
        state = plan.inputs if plan is not None else []
        buffers = self.modules.buffers()
        layout = StepLayout.of(len(params), plan, len(side), leaves, len(buffers),
                               self._float_slots(leaves))
        inputs = layout.inputs(params, state, side, leaves, buffers)
        self.report.note("tracing", "whole SVI step" if layout.whole_step
                         else "loss and gradients")
        if self.background_compile and self.backend.name in BACKGROUND_BACKENDS:
            graph, outputs = self._trace_and_submit(key, layout, inputs, call, plan)
        else:
            graph, outputs = self._compile_and_verify(layout, inputs, call, plan)
            self.graphs.put(key, graph)
        traced_floats = tuple(leaves[i] for i in layout.float_slots)
        for made in (graph, self.graphs.graphs.get(key), self.pending.get(key)):
            if made is not None:
                made.traced_floats = traced_floats
        baked = {layout.float_slots[j] for j in graph.guards.baked}
        if baked:  # kept under a key that holds those arguments' values
            self.valued_floats.update(baked)
            valued = self._key(params, side, leaves, spec, plan)
            self.graphs.rekey(key, valued)
            if key in self.pending:
                self.pending[valued] = self.pending.pop(key)
        return graph, outputs

    # --- the param store ----------------------------------------------------------------
    def _from_store(self, names: list[str]) -> list[torch.Tensor]:
        params = store_tensors()
        try:
            return [params[n] for n in names]
        except KeyError as missing:
            raise StructureChangedError(f"param {missing} left the param store since the "
                                        "step was compiled") from None

    def _record_params(self, params: dict) -> None:
        """The graph's param inputs: one per distinct tensor (the first of its names in
        sorted order); its other names become :attr:`aliases`."""
        first: dict[int, str] = {}
        for name in sorted(params):
            first.setdefault(id(params[name]), name)
        self.param_names = sorted(first.values())
        position = {name: i for i, name in enumerate(self.param_names)}
        self.aliases = {name: position[first[id(params[name])]] for name in sorted(params)
                        if first[id(params[name])] != name}

    def _checked_loss(self, loss: torch.Tensor, args: tuple, kwargs: dict) -> float:
        value = float(loss)
        if not math.isfinite(value) and pyro.poutine.util.is_validation_enabled():
            # name the sites: one eager evaluation, nothing modified
            with self.modules.preserved():
                pairs = self.elbo.particles(self.model, self.guide, args, kwargs)
            self.elbo.check_finite(value, pairs)
            raise NonFiniteLossError(value, [])
        return value

    # --- what SVI calls -----------------------------------------------------------------
    def loss_and_params(self, args: tuple, kwargs: dict):
        """Loss and gradients (a :class:`~pyro_svi_ext.protocol.StepResult`):
        eager on the first call (recording params and facts) and after a fallback,
        compiled otherwise."""
        self.steps += 1
        self.report.steps = self.steps
        if self._not_ready:  # whole_step found the graph compiling or checked: eager
            self._not_ready = False
            return self._eager_step_checked(args, kwargs)
        if self.param_names is None:
            found: dict = {}
            with modules_that_run(found), Stopwatch() as watch:
                result = self.elbo.loss_and_params(self.model, self.guide, args, kwargs)
            self.sentinel.eager_seconds = watch.seconds
            self._record_params(result.params)
            self.facts = result.facts
            self.modules = ModuleState([*self.modules.modules, *(
                m for m in found.values() if not self.modules.covers({id(m): m}))])
            return result
        if self.dynamic_reason is not None:
            return self.elbo.loss_and_params(self.model, self.guide, args, kwargs)
        params = self._from_store(self.param_names)
        graph, outputs = self._run(params, self._from_store(self.side_names), args, kwargs,
                                   None)
        if graph is None:
            self._not_ready = False
            return self._eager_step_checked(args, kwargs)
        value = self._checked_loss(outputs[0], args, kwargs)
        _, grads, _ = graph.layout.split_outputs(outputs)
        for p, g, used in zip(params, grads, graph.had_grad, strict=True):
            if used:
                p.grad = g if p.grad is None else p.grad + g
        return StepResult(value, dict(zip(self.param_names, params, strict=True)), self.facts)

    def whole_step(self, optim: pyro.optim.PyroOptim, args: tuple, kwargs: dict,
                   lazy: bool = False) -> float | torch.Tensor | None:
        """One whole SVI step (loss, gradients and ``optim``'s update in one graph);
        returns the loss, or None when this step must run the eager way (first call,
        an untraceable model, or an optimizer without a compiled update: see
        :attr:`optim_reason`).

        ``lazy=True`` returns the loss as a 0-dim tensor without reading it: nothing
        waits for the device. The non-finite check is then the caller's: a step with a
        non-finite loss still changes no tensor, but ClippedAdam's host-side step count
        and learning rate advance."""
        if self.param_names is None or self.dynamic_reason is not None:
            return None
        params = self._from_store(self.param_names)
        plan = self._plan
        if plan is None or not plan.current(optim, params):
            plan = self._plan = self._new_plan(optim, params)
            if plan is None:
                return None
        graph, outputs = self._run(params, self._from_store(self.side_names), args, kwargs,
                                   plan, checked=not lazy)
        if graph is None:
            return None
        self.steps += 1
        self.report.steps = self.steps
        if lazy:
            plan.after_step(graph.had_grad)
            return outputs[0]
        value = self._checked_loss(outputs[0], args, kwargs)
        if math.isfinite(value):
            plan.after_step(graph.had_grad)
        return value

    def _new_plan(self, optim, params) -> OptimPlan | None:
        if self._refused is not None and self._refused[0] is optim:
            return None
        reason = unsupported_reason(optim, params)
        self.optim_reason = reason
        if reason is None:
            return OptimPlan(optim, params)
        if reason not in TRANSIENT:  # the optimizer's type or options: for good
            self._refused = (optim, reason)
        return None

    def _give_up(self, reason: str, where: str | None = None,
                 cause: str | None = None) -> None:
        """Run eagerly for good (or raise, under ``on_dynamic="raise"``), saying why and,
        when known, which line of code read a tensor value."""
        at = f"; at {where}" if where else ""
        if self.on_dynamic == "raise":
            raise StructureChangedError(f"the model cannot be compiled: {reason}{at}")
        self.dynamic_reason = reason
        self.report.fell_back(reason, where, cause)
        message = (f"{type(self.elbo).__name__}: running eagerly, the model cannot be "
                   f"compiled ({reason}{at})")
        if self.ignore_warnings:  # one line on stderr even without logging configured
            logger.warning(message)
        else:
            self._notify(message, 7)

    def _notify(self, message: str, stacklevel: int,
                category: type[Warning] = RuntimeWarning) -> None:
        """A warning, or a log record when the estimator was built with
        ``ignore_jit_warnings=True`` (what Pyro users write to silence its tracer)."""
        if self.ignore_warnings:
            logger.info(message)
        else:
            warnings.warn(message, category, stacklevel=stacklevel)
