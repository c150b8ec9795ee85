"""A compiled SVI step: an estimator's step traced once into a flat graph, run on later
steps.

The first call runs the estimator eagerly (validation, param creation, optimizer state)
and keeps what it learnt: the params touched and the estimator's
:class:`~pyro_svi_ext.protocol.CompileFacts`. Later calls record (:mod:`.record`: one
real run) one of two graphs (laid out by :class:`~pyro_svi_ext.compile.layout.StepLayout`):

- the whole SVI step (with a supported optimizer, see :mod:`.optim_plan`): loss,
  gradients and the optimizer's update; new params, optimizer state and side state are
  written into their tensors in place, and the graph returns ``(loss,)``;
- loss and gradients (any other optimizer): returns ``(loss, *grads)``, side state
  written in place; the update then runs eagerly.

All updates are masked by ``isfinite(loss)``: a step with a non-finite loss changes
nothing. A model whose Python control flow depends on tensor values cannot be traced:
that is detected and the step falls back to the eager estimator (or raises, by option).
The guard (:mod:`.guard`) compares each call with the traced one; a new graph is
verified (:mod:`.verify`) before it is used.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.optim
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_svi_ext.compile.backends import AUTO_BACKENDS, Backend, get_backend
from pyro_svi_ext.compile.background import (
    BackgroundCompile,
    cache_marker,
    load_portable,
    portable,
    threads_as,
)
from pyro_svi_ext.compile.graph_passes import simplify
from pyro_svi_ext.compile.guard import GraphCache, describe_change, step_key
from pyro_svi_ext.compile.layout import StepLayout, writing_in_place
from pyro_svi_ext.compile.optim_plan import TRANSIENT, OptimPlan, unsupported_reason
from pyro_svi_ext.compile.record import record
from pyro_svi_ext.compile.tracing import (
    Untraceable,
    modules_follow_the_store,
    params_bound_to,
    pyro_modules_bound_to,
)
from pyro_svi_ext.compile.verify import all_close, compile_checked
from pyro_svi_ext.errors import NonFiniteLossError
from pyro_svi_ext.protocol import CompileFacts, StepResult
from pyro_svi_ext.pyro_compat import store_tensors
from pyro_svi_ext.trace.static_plates import full_plates_are_constant

logger = logging.getLogger(__name__)


class StructureChangedError(RuntimeError):
    """A compiled step was called with inputs it was not compiled for (and recompiling
    is disabled), or the model cannot be compiled at all."""


class RecompileWarning(RuntimeWarning):
    """A compiled step met inputs of another shape (or dtype, device, non-tensor value)
    than it was compiled for, and compiles again; the message names what changed."""


@dataclass
class _Graph:
    """A compiled graph, its layout, and which params got a gradient when traced."""

    run: Callable | None
    layout: StepLayout
    had_grad: list[bool]


@dataclass
class _Pending:
    """A graph compiling in the background, and what its check needs: the inputs as
    they were when it was traced (copies), the traced graph's outputs on them, and the
    random state they drew from."""

    job: BackgroundCompile
    graph: dict  # the portable graph the child compiles; rebuilt here at the swap
    layout: StepLayout
    had_grad: list[bool]
    inputs: list
    reference: tuple
    rng_state: tuple
    devices: list
    traced_at: int

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


class CompiledStep:
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
        self.pending: dict[tuple, _Pending] = {}
        #: steps taken through this object (eager, traced or compiled)
        self.steps = 0
        #: ``(step, seconds)`` per graph compiled in the background: the step it was
        #: first used at, and how long its compile took
        self.swaps: list[tuple[int, float]] = []
        #: the last _run found its graph still compiling: the step runs eagerly
        self._not_ready = False
        self._plan: OptimPlan | None = None
        self._refused: tuple | None = None  # (optim, reason) for a permanent refusal

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

    # --- tracing ------------------------------------------------------------------------
    def _step_function(self, layout: StepLayout, args: tuple, kwargs: dict, plan,
                       had_grad: list) -> Callable:
        """The function of flat tensors that ``make_fx`` traces."""
        elbo, model, guide, facts = self.elbo, self.model, self.guide, self.facts
        names, aliases, side_names = self.param_names, self.aliases, self.side_names
        bound_names = names + list(aliases)

        def step(*flat):
            params, state, side_old, arg_values = layout.split_inputs(flat)
            bound = params + [params[at] for at in aliases.values()]
            side = dict(zip(side_names, side_old, strict=True))
            with params_bound_to(bound_names, bound), modules_follow_the_store(), \
                    pyro_modules_bound_to((model, guide), bound_names, bound), \
                    elbo.tracing(facts, side):
                estimate = elbo.objective(model, guide, layout.call_args(args, arg_values),
                                          kwargs)
                raw = torch.autograd.grad(-estimate.surrogate, params, allow_unused=True)
            loss = -estimate.elbo
            had_grad[:] = [g is not None for g in raw]
            grads = [torch.zeros_like(p) if g is None else g
                     for p, g in zip(params, raw, strict=True)]
            with torch.no_grad():
                old = side_old
                new = [estimate.side_updates.get(k, v).detach()
                       for k, v in zip(side_names, side_old, strict=True)]
                if plan is not None:
                    old = [p.detach() for p in params] + state[:layout.n_written] + side_old
                    new_params, new_state = plan.update(old[:len(params)], list(raw), state)
                    new = new_params + new_state + new
                # a step with a non-finite loss changes no state
                finite = torch.isfinite(loss)
                new = [torch.where(finite, a, b) for a, b in zip(new, old, strict=True)]
            return (loss, *grads, *new)

        return step

    def _trace(self, layout: StepLayout, inputs: list, args: tuple, kwargs: dict, plan):
        """``(traced graph, had_grad)``; :class:`Untraceable` when the model cannot be
        traced statically."""
        had_grad: list[bool] = []
        fn = self._step_function(layout, args, kwargs, plan, had_grad)
        traced_inputs = [t.detach().requires_grad_() if i < layout.n_params else
                         (t.detach() if torch.is_tensor(t) else t)
                         for i, t in enumerate(inputs)]
        try:
            with torch.random.fork_rng(), full_plates_are_constant(), \
                    warnings.catch_warnings():
                # torch's own deprecation notices while tracing are not the user's to see
                # (and under -W error they would stop the trace)
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                if self.ignore_warnings:
                    warnings.simplefilter("ignore")
                gm = self._record(fn, traced_inputs)
            gm = simplify(gm)
        except Untraceable:
            raise
        except Exception as err:  # the model cannot be traced statically
            raise Untraceable(f"{type(err).__name__}: {str(err).splitlines()[0]}") from err
        self.compiles += 1
        return gm, had_grad

    @staticmethod
    def _record(fn: Callable, inputs: list) -> torch.fx.GraphModule:
        """The step's graph: :func:`.record.record` (a real run, 5-8x cheaper than
        ``make_fx``), or ``make_fx``'s fake-tensor trace where the recorder fails for
        another reason than a value read (:class:`Untraceable` passes through)."""
        try:
            return record(fn, inputs)
        except Untraceable:
            raise
        except Exception as err:
            logger.info("recording the step failed (%s: %s); tracing with make_fx",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)

    def _eager_reference(self, params: list, side: list, args: tuple, kwargs: dict):
        """The eager step's loss, gradients and side-state updates on the current draws
        (side state read from a scratch copy: nothing is written)."""
        scratch = {k: t.detach().clone() for k, t in zip(self.side_names, side, strict=True)}
        facts = CompileFacts(None, self.facts.side_state)  # tracked, not replayed
        with torch.enable_grad(), self.elbo.tracing(facts, scratch):
            estimate = self.elbo.objective(self.model, self.guide, args, kwargs)
            grads = torch.autograd.grad(-estimate.surrogate, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g
                 for p, g in zip(params, grads, strict=True)]
        side_new = [estimate.side_updates.get(k, scratch[k]) for k in self.side_names]
        return [torch.as_tensor(-estimate.elbo).detach(), *grads, *side_new]

    def _traced_step(self, layout: StepLayout, inputs: list, args: tuple, kwargs: dict,
                     plan) -> dict:
        """Trace the step and run the traced graph op by op on ``inputs``: it must give
        the eager step's loss, gradients and side state on the same random draws (else
        state the trace could not see, e.g. module weights outside the param store, makes
        the model untraceable: :class:`Untraceable`). Nothing is written yet. Returns
        the graph, its outputs (``reference``), its new values, and the random state it
        drew from."""
        gm, had_grad = self._trace(layout, inputs, args, kwargs, plan)
        params = inputs[:layout.n_params]
        side = inputs[layout.n_params + layout.n_state:][:layout.n_side]
        devices = sorted({p.device.index for p in params if p.device.type == "cuda"})
        start = (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices])
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            reference = gm(*inputs)
        eager = self._eager_reference(params, side, args, kwargs)
        loss, grads, new_values = layout.split_outputs(reference)
        traced_side = new_values[len(new_values) - layout.n_side:] if layout.n_side else []
        if not all_close(eager, [loss, *grads, *traced_side]):
            # leave the random state as it was: the eager fallback redraws
            torch.set_rng_state(start[0])
            for d, rng in zip(devices, start[1], strict=True):
                torch.cuda.set_rng_state(rng, d)
            raise Untraceable("the compiled graph disagrees with the eager step (the model "
                              "uses state outside pyro.param, e.g. weights of a module "
                              "registered with pyro.module)")
        return {"gm": gm, "had_grad": had_grad, "reference": reference,
                "new_values": new_values, "rng_state": start, "devices": devices}

    @staticmethod
    def _commit(layout: StepLayout, inputs: list, new_values: list) -> None:
        """Write the traced step's new values into their tensors."""
        targets = [inputs[i] for i in layout.written_inputs]
        if targets:
            with torch.no_grad():
                torch._foreach_copy_(targets, new_values)

    def _compile_and_verify(self, layout: StepLayout, inputs: list, args: tuple,
                            kwargs: dict, plan) -> tuple[_Graph, tuple]:
        """Trace and check a new graph (:meth:`_traced_step`), compile it here, and check
        that the compiled graph gives the traced graph's results. Returns ``(graph,
        traced outputs)``; the traced step's new values are written."""
        traced = self._traced_step(layout, inputs, args, kwargs, plan)
        graph = self._compile_here(layout, inputs, traced, writing_in_place(traced["gm"],
                                                                            layout))
        return graph, traced["reference"]

    def _compile_here(self, layout: StepLayout, inputs: list, traced: dict,
                      production: torch.fx.GraphModule) -> _Graph:
        """Compile ``production`` in this process with the backend chain, checked against
        the traced step (:meth:`_traced_step`'s ``traced``), then write the traced step's
        new values. :class:`Untraceable` when no backend reproduces it."""
        started = time.perf_counter()
        run, backend = compile_checked(
            self.backends, production, inputs, layout, traced["reference"],
            traced["devices"], self.jit_options,
            lambda m: self._notify(f"{type(self.elbo).__name__}: {m}", 9),
            rng_state=traced["rng_state"])
        logger.info("%s: compiled the %s with backend %r in %.2f s (graph %d)",
                    type(self.elbo).__name__,
                    "whole SVI step" if layout.whole_step else "loss and gradients",
                    backend, time.perf_counter() - started, self.compiles)
        self._commit(layout, inputs, traced["new_values"])
        return _Graph(run, layout, traced["had_grad"])

    def _run(self, params: list, side: list, args: tuple, kwargs: dict, plan):
        """The graph and its outputs for this call (compiling and verifying a new graph),
        or ``(None, None)`` after falling back to eager for good (``dynamic_reason``)."""
        key = step_key(params, side, args, kwargs, plan)
        if self.pending:  # a background compile that has ended replaces the interim graph
            pending = self.pending.get(key)
            if pending is not None and pending.job.done() and \
                    self._swap_in(key, pending) is None:
                return None, None
        graph = self.graphs.get(key)
        state = plan.inputs if plan is not None else []
        if graph is not None:
            grad_was = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)  # the graph computes its gradients itself
            try:
                return graph, graph.run(*graph.layout.inputs(params, state, side, args))
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
            change = describe_change(newest, key, self.param_names, self.side_names)
            if self.on_change == "raise":
                raise StructureChangedError(change)
            self._notify(f"{type(self.elbo).__name__}: compiling again: {change} (graph "
                         f"{self.compiles + 1}; pass those inputs with a fixed shape, or "
                         "on_change='raise' to stop here)", 6, RecompileWarning)
        layout = StepLayout.of(len(params), plan, len(side), args)
        inputs = layout.inputs(params, state, side, args)
        try:
            if self.background_compile and self.backend.name in BACKGROUND_BACKENDS:
                return self._trace_and_submit(key, layout, inputs, args, kwargs, plan)
            graph, outputs = self._compile_and_verify(layout, inputs, args, kwargs, plan)
        except Untraceable as why:
            self._give_up(str(why))
            return None, None
        self.graphs.put(key, graph)
        return graph, outputs

    # --- compiling in the background ----------------------------------------------------
    def _trace_and_submit(self, key: tuple, layout: StepLayout, inputs: list, args: tuple,
                          kwargs: dict, plan):
        """Trace the step, take this step with the traced graph (checked against the
        eager step, as when compiling in place), start the backend's compile in a child
        process and compile an interim graph here. Returns ``(graph, outputs)``; the
        graph has no compiled run when the caller gets the traced step's outputs.
        Compiles in place instead for a graph that cannot be sent to a child, or a large
        one the cache already holds."""
        traced = self._traced_step(layout, inputs, args, kwargs, plan)
        production = writing_in_place(traced["gm"], layout)
        try:
            data = portable(production)
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
        self.pending[key] = _Pending(job, data, layout, traced["had_grad"],
                                     copies, traced["reference"], traced["rng_state"],
                                     traced["devices"], self.steps)
        interim = self._interim(layout, inputs, traced, production)
        if interim is not None:
            self.graphs.put(key, interim)
        self._commit(layout, inputs, traced["new_values"])
        return _Graph(None, layout, traced["had_grad"]), traced["reference"]

    def _interim(self, layout: StepLayout, inputs: list, traced: dict,
                 production: torch.fx.GraphModule) -> _Graph | None:
        """A graph for the steps while inductor compiles in the background: the next
        backend of the chain (TorchScript under ``"auto"``), compiled here (0.2-0.4 s on
        BLR and the GMM, about 0.35 ms a step after), checked like any graph; None when
        there is no other backend or it fails (then those steps are eager)."""
        rest = [b for b in self.backends[1:] if b.name != "eager"]
        if not rest:
            return None
        try:
            run, backend = compile_checked(
                rest, production, inputs, layout,
                traced["reference"], traced["devices"], self.jit_options,
                lambda m: logger.info("%s: interim graph: %s", type(self.elbo).__name__, m),
                rng_state=traced["rng_state"], quiet=True)
        except Untraceable as why:
            logger.info("%s: no interim graph (%s)", type(self.elbo).__name__, why)
            return None
        logger.info("%s: interim graph compiled with %r while inductor compiles",
                    type(self.elbo).__name__, backend)
        return _Graph(run, layout, traced["had_grad"])

    def _swap_in(self, key: tuple, pending: _Pending) -> _Graph | None:
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
                    failed=failed, rng_state=pending.rng_state)
        except Untraceable as why:
            self._give_up(str(why))
            return None
        logger.info("%s: compiled the %s with backend %r in the background in %.2f s "
                    "(graph %d), in use from step %d (traced at step %d)",
                    type(self.elbo).__name__,
                    "whole SVI step" if pending.layout.whole_step else "loss and gradients",
                    backend, pending.job.seconds, self.compiles, self.steps + 1,
                    pending.traced_at + 1)
        graph = _Graph(run, pending.layout, pending.had_grad)
        self.graphs.put(key, graph)
        self.swaps.append((self.steps + 1, pending.job.seconds))
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
        if self._not_ready:  # whole_step found the graph compiling: eager this step
            self._not_ready = False
            return self.elbo.loss_and_params(self.model, self.guide, args, kwargs)
        if self.param_names is None or self.dynamic_reason is not None:
            result = self.elbo.loss_and_params(self.model, self.guide, args, kwargs)
            if self.param_names is None:
                self._record_params(result.params)
                self.facts = result.facts
            return result
        params = self._from_store(self.param_names)
        graph, outputs = self._run(params, self._from_store(self.side_names), args, kwargs,
                                   None)
        if graph is None:
            self._not_ready = False
            return self.elbo.loss_and_params(self.model, self.guide, args, kwargs)
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
                                   plan)
        if graph is None:
            return None
        self.steps += 1
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

    def _give_up(self, reason: str) -> None:
        if self.on_dynamic == "raise":
            raise StructureChangedError(f"the model cannot be compiled: {reason}")
        self.dynamic_reason = reason
        message = (f"{type(self.elbo).__name__}: running eagerly, the model cannot be "
                   f"compiled ({reason})")
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
