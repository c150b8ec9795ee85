"""Tracing a compiled step: the estimator's step as a function of flat tensors, recorded
into a graph by one real run, checked against the eager step on the same draws, and
compiled here (the stage of :class:`~pyro_svi_ext.compile.step.CompiledStep` that makes
a new graph).

Nothing here moves state the eager step would not move: the recording and the eager
check run on copies of module buffers (or restore them), under a forked random state
where the eager step's draws must not be repeated, and the traced step's new values are
written once (:meth:`StepTracing._commit`).
"""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_svi_ext.compile.arguments import Guards, TracedFloat, unflatten
from pyro_svi_ext.compile.graph_passes import copy_graph, lazy_module, simplify
from pyro_svi_ext.compile.layout import StepLayout, writing_in_place
from pyro_svi_ext.compile.module_state import ModuleState, modules_that_run
from pyro_svi_ext.compile.record import record
from pyro_svi_ext.compile.tracing import (
    Untraceable,
    code_location,
    modules_follow_the_store,
    params_bound_to,
    pyro_modules_bound_to,
    whose_code,
)
from pyro_svi_ext.compile.verify import (
    CHECK_PASSES,
    GraphPassError,
    all_close,
    check_simplified,
    compile_checked,
)
from pyro_svi_ext.errors import DeviceMismatchError
from pyro_svi_ext.protocol import CompileFacts
from pyro_svi_ext.pyro_compat import pyro_sees_a_jit_trace
from pyro_svi_ext.trace.static_plates import full_plates_are_constant

logger = logging.getLogger("pyro_svi_ext.compile.step")


class NewModules(Exception):  # noqa: N818 - a signal to trace again, not an error
    """The traced run called modules the step's :class:`ModuleState` does not hold
    (the model's structure changed): trace again with them."""

    def __init__(self, found: dict) -> None:
        super().__init__(f"{len(found)} modules")
        self.found = found


@dataclass
class Graph:
    """A compiled graph, its layout, which params got a gradient when traced, and what
    its float arguments must satisfy (:class:`.arguments.Guards`)."""

    run: Callable | None
    layout: StepLayout
    had_grad: list[bool]
    guards: Guards | None = None
    #: the float arguments it was traced with, and the sentinel's counters
    traced_floats: tuple = ()
    uses: int = 0
    next_check: int = 1
    new_value_checks: int = 0


def random_state(devices: list) -> tuple:
    """``(CPU generator state, [CUDA generator state per device])``."""
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def set_random_state(state: tuple, devices: list) -> None:
    torch.set_rng_state(state[0])
    for d, rng in zip(devices, state[1], strict=True):
        torch.cuda.set_rng_state(rng, d)


def same_random_state(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and all(
        torch.equal(x, y) for x, y in zip(a[1], b[1], strict=True))


def gradients(surrogate, params: list, frozen_grads: list | None = None) -> list:
    """``d(-surrogate)/d param`` for each param that requires a gradient; for the others
    zeros where ``frozen_grads`` says the param has a gradient tensor (an eager step
    would update it with its zeroed gradient), else None (as for every param when
    nothing reaches the surrogate, e.g. a model with no params or no random site)."""
    frozen_grads = frozen_grads or [False] * len(params)
    wanted = [p for p in params if p.requires_grad]
    if wanted and getattr(surrogate, "requires_grad", False):
        grads = iter(torch.autograd.grad(-surrogate, wanted, allow_unused=True))
    else:
        grads = iter([None] * len(wanted))
    return [next(grads) if p.requires_grad else
            (torch.zeros_like(p) if has else None)
            for p, has in zip(params, frozen_grads, strict=True)]


class StepTracing:
    """The tracing stage of :class:`~pyro_svi_ext.compile.step.CompiledStep` (a mixin:
    it reads the step's estimator, model, guide, facts, param names and options)."""

    modules: ModuleState

    def _step_function(self, layout: StepLayout, leaves: list, spec, plan, had_grad: list,
                       frozen_grads: list, guards: Guards) -> Callable:
        """The function of flat tensors that is recorded: loss, gradients and new
        values (see :class:`~pyro_svi_ext.compile.layout.StepLayout`). Module buffers
        are copied first in the graph, so a graph writes its inputs only through the
        production graph's final copies."""
        elbo, model, guide, facts = self.elbo, self.model, self.guide, self.facts
        names, aliases, side_names = self.param_names, self.aliases, self.side_names
        bound_names = names + list(aliases)
        modules = self.modules

        def step(*flat):
            params, state, side_old, arg_values, float_values, buffers_in = \
                layout.split_inputs(flat)
            floats = [TracedFloat.argument(leaves[slot], value, j, guards) for j, (slot, value)
                      in enumerate(zip(layout.float_slots, float_values, strict=True))]
            args, kwargs = unflatten(layout.call_leaves(leaves, arg_values, floats), spec)
            buffers = [b.clone() for b in buffers_in]
            bound = params + [params[at] for at in aliases.values()]
            side = dict(zip(side_names, side_old, strict=True))
            with params_bound_to(bound_names, bound), modules_follow_the_store(), \
                    pyro_modules_bound_to((model, guide), bound_names, bound), \
                    modules.bound_to(buffers), elbo.tracing(facts, side):
                estimate = elbo.objective(model, guide, args, kwargs)
                raw = gradients(estimate.surrogate, params, frozen_grads)
            loss = -torch.as_tensor(estimate.elbo)
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
                # a step with a non-finite loss changes no param, optimizer or side state
                # (module buffers move as in the eager step, where the forward ran)
                finite = torch.isfinite(loss)
                new = [torch.where(finite, a, b) for a, b in zip(new, old, strict=True)]
            return (loss, *grads, *new, *buffers)

        return step

    def _trace(self, layout: StepLayout, inputs: list, leaves: list, spec, plan):
        """``(traced graph, had_grad, guards)``; :class:`Untraceable` when the model
        cannot be traced statically, :class:`NewModules` when it ran modules not yet
        known."""
        had_grad: list[bool] = []
        frozen_grads = [not p.requires_grad and p.grad is not None
                        for p in inputs[:layout.n_params]]
        guards = Guards()
        fn = self._step_function(layout, leaves, spec, plan, had_grad, frozen_grads, guards)
        traced_inputs = [t.detach().requires_grad_(t.requires_grad) if i < layout.n_params
                         else (t.detach() if torch.is_tensor(t) else t)
                         for i, t in enumerate(inputs)]
        found: dict = {}
        try:
            with torch.random.fork_rng(), full_plates_are_constant(), \
                    warnings.catch_warnings(), modules_that_run(found), \
                    pyro_sees_a_jit_trace():
                # torch's own deprecation notices while tracing are not the user's to see
                # (and under -W error they would stop the trace)
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                if self.ignore_warnings:
                    warnings.simplefilter("ignore")
                gm = self._record(fn, traced_inputs)
            if not self.modules.covers(found):
                raise NewModules(found)
            before = lazy_module(gm, copy_graph(gm.graph)) if CHECK_PASSES[0] else None
            gm = simplify(gm)
            if before is not None:
                check_simplified(before, gm, traced_inputs)
        except (Untraceable, NewModules, DeviceMismatchError, GraphPassError):
            raise  # (data and params on two devices: the eager step says the same)
        except Exception as err:  # the model cannot be traced statically
            first = str(err).splitlines()[0] if str(err) else ""
            why = Untraceable(f"{type(err).__name__}: {first}")
            frames = traceback.extract_tb(err.__traceback__)
            why.where, why.cause = code_location(frames), whose_code(frames)
            raise why from err
        self.compiles += 1
        return gm, had_grad, guards

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
        """The eager step's loss, gradients, side-state updates and new buffer values on
        the current draws (side state read from a scratch copy, buffers restored:
        nothing is written)."""
        scratch = {k: t.detach().clone() for k, t in zip(self.side_names, side, strict=True)}
        facts = CompileFacts(None, self.facts.side_state)  # tracked, not replayed
        with torch.enable_grad(), self.elbo.tracing(facts, scratch), \
                self.modules.preserved():
            estimate = self.elbo.objective(self.model, self.guide, args, kwargs)
            grads = gradients(estimate.surrogate, params,
                              [not p.requires_grad and p.grad is not None for p in params])
            buffers = [b.detach().clone() for b in self.modules.buffers()]
        grads = [torch.zeros_like(p) if g is None else g
                 for p, g in zip(params, grads, strict=True)]
        side_new = [estimate.side_updates.get(k, scratch[k]) for k in self.side_names]
        return [torch.as_tensor(-estimate.elbo).detach(), *grads, *side_new, *buffers]

    def _traced_step(self, layout: StepLayout, inputs: list, call: tuple, plan) -> dict:
        """Trace the step and run the traced graph op by op on ``inputs``: it must give
        the eager step's loss, gradients, side state and buffers on the same random
        draws (else state the trace could not see makes the model untraceable:
        :class:`Untraceable`). Nothing is written yet. Returns the graph, its outputs
        (``reference``), its new values, and the random state it drew from and left.
        ``call``: ``(args, kwargs, leaves, spec)`` of the call."""
        args, kwargs, leaves, spec = call
        gm, had_grad, guards = self._trace(layout, inputs, leaves, spec, plan)
        params = inputs[:layout.n_params]
        side = inputs[layout.n_params + layout.n_state:][:layout.n_side]
        devices = sorted({p.device.index for p in params if p.device.type == "cuda"})
        start = random_state(devices)
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            reference = gm(*inputs)
            after = random_state(devices)
        eager = self._eager_reference(params, side, args, kwargs)
        loss, grads, new_values = layout.split_outputs(reference)
        written_outside = layout.n_side + layout.n_buffers  # side state, then buffers
        traced_rest = new_values[len(new_values) - written_outside:] if written_outside else []
        if not all_close(eager, [loss, *grads, *traced_rest]) or not same_random_state(
                after, random_state(devices)):
            # leave the random state as it was: the eager fallback redraws
            set_random_state(start, devices)
            why = Untraceable("the compiled graph disagrees with the eager step (the "
                              "model uses state outside pyro.param and module buffers, "
                              "e.g. a tensor it changes in place)")
            why.cause = "model"
            raise why
        return {"gm": gm, "had_grad": had_grad, "guards": guards, "reference": reference,
                "new_values": new_values, "rng_state": start, "rng_after": after,
                "devices": devices}

    @staticmethod
    def _commit(layout: StepLayout, inputs: list, new_values: list) -> None:
        """Write the traced step's new values into their tensors."""
        targets = [inputs[i] for i in layout.written_inputs]
        if targets:
            with torch.no_grad():
                torch._foreach_copy_(targets, new_values)

    def _compile_and_verify(self, layout: StepLayout, inputs: list, call: tuple,
                            plan) -> tuple[Graph, tuple]:
        """Trace and check a new graph (:meth:`_traced_step`), compile it here, and check
        that the compiled graph gives the traced graph's results. Returns ``(graph,
        traced outputs)``; the traced step's new values are written."""
        traced = self._traced_step(layout, inputs, call, plan)
        production = self._as_a_child_builds_it(writing_in_place(traced["gm"], layout))
        return self._compile_here(layout, inputs, traced, production), traced["reference"]

    def _compile_here(self, layout: StepLayout, inputs: list, traced: dict,
                      production: torch.fx.GraphModule) -> Graph:
        """Compile ``production`` in this process with the backend chain, checked against
        the traced step (:meth:`_traced_step`'s ``traced``), then write the traced step's
        new values. :class:`Untraceable` when no backend reproduces it."""
        started = time.perf_counter()
        try:
            run, backend = compile_checked(
                self.backends, production, inputs, layout, traced["reference"],
                traced["devices"], self.jit_options,
                lambda m: self._notify(f"{type(self.elbo).__name__}: {m}", 9),
                rng_state=traced["rng_state"], rng_after=traced["rng_after"])
        except Untraceable:
            # the step runs eagerly instead: it draws what the traced step drew
            set_random_state(traced["rng_state"], traced["devices"])
            raise
        logger.info("%s: compiled the %s with backend %r in %.2f s (graph %d)",
                    type(self.elbo).__name__,
                    "whole SVI step" if layout.whole_step else "loss and gradients",
                    backend, time.perf_counter() - started, self.compiles)
        self.report.compiled(backend, time.perf_counter() - started, in_background=False)
        self._commit(layout, inputs, traced["new_values"])
        return Graph(run, layout, traced["had_grad"], traced["guards"])
