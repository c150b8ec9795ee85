"""Trace an ELBO's step once, run the compiled graph on later steps.

Two graphs can be traced from the same estimator:

- *loss and gradients*: inputs ``(*params, *side_state, *arg_tensors)``, outputs
  ``(loss, *grads)``, the new side state written in place; used by
  ``ELBO.loss_and_grads`` and by :class:`~pyro_svi_ext.SVI` with an optimizer that has
  no compiled update.
- *the whole SVI step*: inputs ``(*params, *optimizer_state, *side_state,
  *arg_tensors)``, output ``(loss,)``; the new params, optimizer state and side state
  are copied into the param store's tensors and the optimizer's own state tensors in
  place.

Side state is what an estimator rewrites in the param store outside any optimizer
(``ELBO._side_state``: TraceGraph's decaying-average baselines). All updates are
masked by ``isfinite(loss)``: a step with a non-finite loss changes nothing.

Both are traced with fake tensors, so a model whose Python control flow depends on
tensor *values* cannot be traced: that is detected at trace time and the step falls
back to the eager estimator (or raises, by option). A cheap guard on every call
compares param and argument shapes, dtypes and devices (and the non-tensor arguments)
with those the graph was traced for.
"""

from __future__ import annotations

import logging
import math
import operator
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.optim
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_svi_ext.compile.backends import (
    AUTO_BACKENDS,
    Backend,
    LegacyBackendWarning,
    get_backend,
)
from pyro_svi_ext.compile.optim_plan import TRANSIENT, OptimPlan, unsupported_reason
from pyro_svi_ext.compile.tracing import (
    Untraceable,
    modules_follow_the_store,
    params_bound_to,
    pyro_modules_bound_to,
)
from pyro_svi_ext.errors import NonFiniteLossError
from pyro_svi_ext.pyro_compat import store_tensors
from pyro_svi_ext.trace.static_plates import full_plates_are_constant

logger = logging.getLogger(__name__)


class StructureChangedError(RuntimeError):
    """A compiled step was called with inputs it was not compiled for (and recompiling
    is disabled), or the model cannot be compiled at all."""


#: ``t -> (t.shape, t.dtype, t.device)``, what the guard compares per tensor
_signature = operator.attrgetter("shape", "dtype", "device")


def _writing_in_place(gm: torch.fx.GraphModule, kept: int, n_grads: int,
                      targets: list[int]) -> torch.fx.GraphModule:
    """``gm`` (outputs ``(loss, *grads, *new_values)``) rewritten to copy each new value
    into its input ``targets[i]`` in place and to output its first ``kept`` outputs only
    (``(loss,)`` for a whole step, whose gradients are fused into the update by the
    backend)."""
    graph = torch.fx.Graph()
    outputs = graph.graph_copy(gm.graph, {})
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    new_values = outputs[1 + n_grads:]
    for at, value in zip(targets, new_values, strict=True):
        graph.call_function(torch.ops.aten.copy_.default, (placeholders[at], value))
    graph.output(tuple(outputs[:kept]))
    graph.eliminate_dead_code()
    return torch.fx.GraphModule(gm, graph)


@dataclass
class _Graph:
    """A compiled graph, where its tensor arguments sit in ``args``, and which params
    got a gradient when it was traced."""

    run: Callable
    arg_slots: list[int]
    had_grad: list[bool]
    reference: torch.fx.GraphModule  # the traced graph, functional, all outputs
    kept: int  # outputs ``run`` returns (it writes the new values into its inputs)


class CompiledLossAndGrads:
    """``(model, guide, args, kwargs) -> (loss, params)`` like ``ELBO._loss_and_grads``,
    compiled after a first eager call; :meth:`svi_step` runs a whole SVI step.

    :param elbo: the estimator (its ``_objective``, ``_pairs``, ``_check_finite``).
    :param eager: the eager ``_loss_and_grads`` (first call and fallback).
    :param backend: backend name (``"eager"``, ``"jit"``, ``"inductor"`` or a plugin's).
    :param on_change: ``"recompile"`` (keep up to ``cache_size`` graphs) or ``"raise"``
        (:class:`StructureChangedError` naming what changed).
    :param on_dynamic: ``"eager"`` (warn once, run the eager estimator) or ``"raise"``
        when the model cannot be traced (e.g. it branches on tensor values).
    :param jit_options: keyword arguments of ``torch.jit.trace`` for the ``"jit"`` backend.
    :param ignore_warnings: silence the warnings raised while the step is traced.
    """

    def __init__(self, elbo, eager: Callable, backend: str = "auto",
                 on_change: str = "recompile", on_dynamic: str = "eager", cache_size: int = 8,
                 jit_options: dict | None = None, ignore_warnings: bool = False):
        if on_change not in ("recompile", "raise") or on_dynamic not in ("eager", "raise"):
            raise ValueError("on_change must be 'recompile' or 'raise'; on_dynamic 'eager' or "
                             f"'raise'; got {on_change!r}, {on_dynamic!r}")
        self.elbo = elbo
        self.eager = eager
        #: backends to try, in order ("auto": inductor, then TorchScript, then replay)
        self.backends: list[Backend] = ([get_backend(b) for b in AUTO_BACKENDS]
                                        if backend == "auto" else [get_backend(backend)])
        self.on_change = on_change
        self.on_dynamic = on_dynamic
        self.cache_size = cache_size
        self.jit_options = jit_options
        self.ignore_warnings = ignore_warnings
        self.graphs: OrderedDict = OrderedDict()
        self._last: tuple | None = None  # (key, graph) of the last call: checked first
        self.param_names: list[str] | None = None
        #: other param-store names of a param tensor (``pyro.module`` of one network
        #: under two names): name -> its position in ``param_names``
        self.aliases: dict[str, int] = {}
        #: param-store entries the step rewrites outside the optimizer (see
        #: ``ELBO._side_state``), recorded with ``param_names`` by the first eager call
        self.side_names: list[str] = []
        self.dynamic_reason: str | None = None
        #: why the optimizer update runs eagerly (None while it is compiled)
        self.optim_reason: str | None = None
        self.compiles = 0
        self.structure = None  # what the estimator replays while tracing
        self._plan: OptimPlan | None = None
        self._refused: tuple | None = None  # (optim, reason) for a permanent refusal

    # --- tracing ----------------------------------------------------------------------
    def _traced(self, model, guide, kwargs, arg_slots, args, plan, had_grad: list):
        names = self.param_names
        elbo = self.elbo
        n = len(names)
        n_state = len(plan.inputs) if plan is not None else 0
        n_written = len(plan.written) if plan is not None else 0
        side_names = self.side_names
        n_side = len(side_names)
        structure = self.structure

        aliases = self.aliases
        bound_names = names + list(aliases)

        def step(*flat):
            params, state = list(flat[:n]), list(flat[n:n + n_state])
            bound = params + [params[at] for at in aliases.values()]
            side_old = list(flat[n + n_state:n + n_state + n_side])
            side = dict(zip(side_names, side_old, strict=True))
            call_args = list(args)
            for slot, value in zip(arg_slots, flat[n + n_state + n_side:], strict=True):
                call_args[slot] = value
            with params_bound_to(bound_names, bound), modules_follow_the_store(), \
                    pyro_modules_bound_to((model, guide), bound_names, bound), \
                    elbo._replaying(structure), elbo._side_state_in(side):
                loss, surrogate = elbo._objective(model, guide, tuple(call_args), kwargs)
                raw = torch.autograd.grad(-surrogate, params, allow_unused=True)
            had_grad[:] = [g is not None for g in raw]
            grads = [torch.zeros_like(p) if g is None else g
                     for p, g in zip(params, raw, strict=True)]
            with torch.no_grad():
                old = side_old
                new = [side[k].detach() for k in side_names]
                if plan is not None:
                    old = [p.detach() for p in params] + state[:n_written] + side_old
                    new_params, new_state = plan.update(old[:n], list(raw), state)
                    new = new_params + new_state + new
                # a step with a non-finite loss changes no state
                finite = torch.isfinite(loss)
                new = [torch.where(finite, a, b) for a, b in zip(new, old, strict=True)]
            return (loss, *grads, *new)

        return step

    def _key(self, params, side, args, kwargs, plan):
        return (tuple(map(_signature, params)), tuple(map(_signature, side)),
                tuple(_signature(a) if isinstance(a, torch.Tensor) else ("value", repr(a))
                      for a in args),
                repr(sorted(kwargs.items())) if kwargs else "",
                None if plan is None else plan.key)

    def _trace(self, model, guide, params, side, args, kwargs, plan):
        """``(traced graph, production graph, tensor-argument slots, had_grad, outputs
        the production graph returns)``; :class:`Untraceable` when the model cannot be
        traced statically. The production graph writes the new values (params and
        optimizer state for a whole step, side state) into its inputs."""
        slots = [i for i, a in enumerate(args) if torch.is_tensor(a)]
        state = plan.inputs if plan is not None else []
        inputs = ([p.detach().requires_grad_() for p in params] + list(state)
                  + [t.detach() for t in side] + [args[i] for i in slots])
        had_grad: list[bool] = []
        fn = self._traced(model, guide, kwargs, slots, args, plan, had_grad)
        try:
            with torch.random.fork_rng(), full_plates_are_constant(), \
                    warnings.catch_warnings():
                # torch's own deprecation notices while tracing are not the user's to see
                # (and under -W error they would stop the trace)
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                if self.ignore_warnings:
                    warnings.simplefilter("ignore")
                gm = make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)
        except Untraceable:
            raise
        except Exception as err:  # the model cannot be traced statically
            raise Untraceable(f"{type(err).__name__}: {str(err).splitlines()[0]}") from err
        self.compiles += 1
        n, n_side = len(params), len(self.side_names)
        if plan is not None:  # params, optimizer state, side state; returns (loss,)
            targets = list(range(n + len(plan.written)))
            targets += list(range(n + len(plan.inputs), n + len(plan.inputs) + n_side))
            return gm, _writing_in_place(gm, 1, n, targets), slots, had_grad, 1
        if n_side:  # side state only; returns (loss, *grads)
            production = _writing_in_place(gm, 1 + n, n, list(range(n, n + n_side)))
            return gm, production, slots, had_grad, 1 + n
        return gm, gm, slots, had_grad, 1 + n

    def _backend_graph(self, gm, production, slots, had_grad, kept, inputs, targets,
                       reference, devices) -> _Graph:
        """Compile ``production`` with the first backend that compiles it and matches
        the traced graph's ``reference`` outputs on the same draws; a failing backend is
        dropped (with a warning when another one takes over)."""
        failures = []
        for backend in list(self.backends):
            copies = {id(t): t.clone() for t in targets}
            try:
                options = ({"jit_options": self.jit_options}
                           if backend.name == "jit" and self.jit_options else {})
                # a compiler's internal warnings (deprecations inside torch) are not the
                # user's: under -W error they would make every backend fail
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    warnings.simplefilter("default", LegacyBackendWarning)  # ours, once
                    run = backend.compile(production, inputs, **options)
                    with torch.no_grad(), torch.random.fork_rng(devices=devices):
                        compiled = run(*[copies.get(id(t), t) for t in inputs])
                got = [*compiled[:kept], *[copies[id(t)] for t in targets]]
                want = [*reference[:kept], *reference[len(reference) - len(targets):]]
                if not _all_close(want, got):
                    raise ArithmeticError("its results differ from the traced graph's")
            except Exception as err:
                failures.append(f"{backend.name}: {type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}")
                if len(self.backends) > 1:
                    self.backends.remove(backend)
                    self._notify(f"{type(self.elbo).__name__}: compile backend "
                                 f"{failures[-1]}; using {self.backends[0].name!r}", 7)
                    continue
                raise Untraceable(f"backend {failures[-1]}") from err
            return _Graph(run, slots, had_grad, gm, kept)
        raise Untraceable("no compile backend: " + "; ".join(failures))  # pragma: no cover

    def _compile_and_verify(self, model, guide, params, side, args, kwargs, plan):
        """Trace, compile and check a new graph: the traced graph run op by op must give
        the eager step's loss and gradients on the same random draws (else state the
        trace could not see, e.g. module weights outside the param store, makes the
        model untraceable), and the compiled graph the traced graph's results. Returns
        ``(graph, traced outputs (loss, *grads, *new_values))``."""
        gm, production, slots, had_grad, kept = self._trace(model, guide, params, side,
                                                            args, kwargs, plan)
        state = plan.inputs if plan is not None else []
        inputs = [*params, *state, *side, *[args[i] for i in slots]]
        targets = (params + plan.written if plan is not None else []) + side
        devices = sorted({p.device.index for p in params if p.device.type == "cuda"})
        start = (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices])
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            reference = gm(*inputs)
        graph = self._backend_graph(gm, production, slots, had_grad, kept, inputs, targets,
                                    reference, devices)
        # the eager step on the same draws, its side state updated in a scratch copy
        scratch = {k: t.detach().clone() for k, t in zip(self.side_names, side, strict=True)}
        with torch.enable_grad(), self.elbo._side_state_in(scratch):
            loss, surrogate = self.elbo._objective(model, guide, args, kwargs)
            eager = torch.autograd.grad(-surrogate, params, allow_unused=True)
        eager = [torch.zeros_like(p) if g is None else g
                 for p, g in zip(params, eager, strict=True)]
        eager_side = [scratch[k] for k in self.side_names]
        traced_side = reference[len(reference) - len(side):] if side else []
        if not _all_close([loss.detach(), *eager, *eager_side],
                          [*reference[:1 + len(params)], *traced_side]):
            # leave the random state as it was: the eager fallback redraws
            torch.set_rng_state(start[0])
            for d, rng in zip(devices, start[1], strict=True):
                torch.cuda.set_rng_state(rng, d)
            raise Untraceable("the compiled graph disagrees with the eager step (the model "
                              "uses state outside pyro.param, e.g. weights of a module "
                              "registered with pyro.module)")
        if targets:  # commit the reference step's new values
            with torch.no_grad():
                torch._foreach_copy_(targets, list(reference[1 + len(params):]))
        return graph, reference

    def _run(self, model, guide, params, side, args, kwargs, plan):
        """The graph and its outputs for this call (compiling and verifying a new
        graph), or ``(None, None)`` after falling back to eager for good
        (``self.dynamic_reason`` set)."""
        key = self._key(params, side, args, kwargs, plan)
        last = self._last
        if last is not None and last[0] == key:  # the usual case: as on the last call
            graph = last[1]
        else:
            if last is not None and last[0] in self.graphs:  # it was the most recent
                self.graphs.move_to_end(last[0])
            graph = self.graphs.get(key)
            if graph is not None:
                self.graphs.move_to_end(key)
                self._last = (key, graph)
        if graph is not None:
            state = plan.inputs if plan is not None else []
            grad_was = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)  # the graph computes its gradients itself
            try:
                return graph, graph.run(*params, *state, *side,
                                        *[args[i] for i in graph.arg_slots])
            finally:
                torch._C._set_grad_enabled(grad_was)
        if self.graphs and self.on_change == "raise":
            raise StructureChangedError(self._describe_change(key))
        try:
            graph, outputs = self._compile_and_verify(model, guide, params, side, args,
                                                      kwargs, plan)
        except Untraceable as why:
            self._give_up(str(why))
            return None, None
        self.graphs[key] = graph
        self._last = (key, graph)
        while len(self.graphs) > self.cache_size:
            self.graphs.popitem(last=False)
        return graph, outputs

    @property
    def backend(self) -> Backend:
        """The backend new graphs are compiled with."""
        return self.backends[0]

    def _store_params(self) -> list[torch.Tensor]:
        return self._from_store(self.param_names)

    def _store_side(self) -> list[torch.Tensor]:
        """The side state's tensors (e.g. decaying-average baselines), in the store."""
        return self._from_store(self.side_names) if self.side_names else []

    @staticmethod
    def _from_store(names: list[str]) -> list[torch.Tensor]:
        params = store_tensors()
        try:
            return [params[n] for n in names]
        except KeyError as missing:
            raise StructureChangedError(f"param {missing} left the param store since the "
                                        "step was compiled") from None

    def _checked_loss(self, loss: torch.Tensor, model, guide, args, kwargs) -> float:
        value = float(loss)
        if not math.isfinite(value) and pyro.poutine.util.is_validation_enabled():
            # name the sites: one eager evaluation, nothing modified
            self.elbo._check_finite(value, self.elbo._pairs(model, guide, args, kwargs))
            raise NonFiniteLossError(value, [])
        return value

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

    # --- calling ----------------------------------------------------------------------
    def __call__(self, model, guide, args: tuple, kwargs: dict):
        if self.param_names is None or self.dynamic_reason is not None:
            loss, params = self.eager(model, guide, args, kwargs)
            if self.param_names is None:
                self._record_params(params)
                self.structure = self.elbo._static_structure()
                self.side_names = self.elbo._side_state()
            return loss, params
        params = self._store_params()
        graph, outputs = self._run(model, guide, params, self._store_side(), args, kwargs,
                                   None)
        if graph is None:
            return self.eager(model, guide, args, kwargs)
        value = self._checked_loss(outputs[0], model, guide, args, kwargs)
        grads = outputs[1:1 + len(params)]
        for p, g, used in zip(params, grads, graph.had_grad, strict=True):
            if used:
                p.grad = g if p.grad is None else p.grad + g
        return value, dict(zip(self.param_names, params, strict=True))

    def svi_step(self, model, guide, optim: pyro.optim.PyroOptim, args: tuple,
                 kwargs: dict, lazy: bool = False) -> float | torch.Tensor | None:
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
        params = self._store_params()
        plan = self._plan
        if plan is None or not plan.current(optim, params):
            plan = self._plan = self._new_plan(optim, params)
            if plan is None:
                return None
        graph, outputs = self._run(model, guide, params, self._store_side(), args, kwargs,
                                   plan)
        if graph is None:
            return None
        if lazy:
            plan.after_step(graph.had_grad)
            return outputs[0]
        value = self._checked_loss(outputs[0], model, guide, args, kwargs)
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
        self._notify(f"{type(self.elbo).__name__}: running eagerly, the model cannot be "
                     f"compiled ({reason})", 6)

    def _notify(self, message: str, stacklevel: int) -> None:
        """A ``RuntimeWarning``, or a log record when the estimator was built with
        ``ignore_jit_warnings=True`` (what Pyro users write to silence its tracer)."""
        if self.ignore_warnings:
            logger.info(message)
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)

    def _describe_change(self, key) -> str:
        old_params, old_side, old_args, old_kwargs, _ = next(reversed(self.graphs))
        new_params, new_side, new_args, new_kwargs, _ = key
        for what, names, old, new in (("param", self.param_names, old_params, new_params),
                                      ("param", self.side_names, old_side, new_side),
                                      ("argument", None, old_args, new_args)):
            for i, (a, b) in enumerate(zip(old, new, strict=False)):
                if a != b:
                    name = names[i] if names is not None else f"#{i}"
                    return (f"{what} {name} changed from {_show(a)} to {_show(b)} since the "
                            "step was compiled")
            if len(old) != len(new):
                return f"number of {what}s changed from {len(old)} to {len(new)}"
        if old_kwargs != new_kwargs:
            return f"keyword arguments changed from {old_kwargs} to {new_kwargs}"
        return "the optimizer's hyper-parameters or state layout changed"


def _all_close(want: list, got: list) -> bool:
    """Equal up to float rounding: ``|got - want| <= 1e-4 |want| + 1e-5 + 1e-4 max|want|``
    per tensor (sums over 1e5 terms round differently in a fused kernel; a structural
    mistake is off by far more)."""
    if len(want) != len(got):
        return False
    for w, g in zip(want, got, strict=True):
        w, g = w.detach(), g.detach().to(w.dtype)
        scale = float(w.abs().max()) if w.numel() and bool(w.isfinite().all()) else 0.0
        if not torch.allclose(g, w, rtol=1e-4, atol=1e-5 + 1e-4 * scale, equal_nan=True):
            return False
    return True


def _show(signature: tuple) -> str:
    if signature[0] == "value":
        return signature[1]
    shape, dtype, device = signature
    return f"({tuple(shape)}, {dtype}, {device})"
