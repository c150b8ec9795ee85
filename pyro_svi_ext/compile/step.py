"""Trace an ELBO's loss and gradients once, run the compiled graph on later steps.

The traced function takes the unconstrained params (in a fixed order) and the tensor
arguments, and returns ``(loss, *grads)``. It is traced with fake tensors, so a model
whose Python control flow depends on tensor *values* cannot be traced: that is detected
at trace time and the step falls back to the eager estimator (or raises, by option).
A cheap guard on every call compares param and argument shapes, dtypes and devices
(and the non-tensor arguments) with those the graph was traced for.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager

import pyro
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_svi_ext.compile.backends import get_backend
from pyro_svi_ext.errors import NonFiniteLossError


class StructureChangedError(RuntimeError):
    """A compiled step was called with inputs it was not compiled for (and recompiling
    is disabled), or the model cannot be compiled at all."""


def _signature(t: torch.Tensor) -> tuple:
    return (tuple(t.shape), t.dtype, t.device)


@contextmanager
def _params_bound_to(names: list[str], values: list[torch.Tensor]):
    """The param store serves ``values`` for ``names`` (and is restored afterwards,
    including anything written to it meanwhile); distribution validation is off."""
    store = pyro.get_param_store()
    saved = dict(store._params)
    saved_names = dict(store._param_to_name)
    validating = pyro.poutine.util.is_validation_enabled()
    pyro.enable_validation(False)
    try:
        for name, value in zip(names, values, strict=True):
            store._params[name] = value
        bound = dict(store._params)
        yield
        if store._params.keys() != bound.keys() or any(
                store._params[n] is not v for n, v in bound.items()):
            raise _Untraceable("the step writes pyro's param store (e.g. a decaying-average "
                               "baseline or a new param), which a compiled graph cannot do")
    finally:
        store._params.clear()
        store._params.update(saved)
        store._param_to_name.clear()
        store._param_to_name.update(saved_names)
        pyro.enable_validation(validating)


@contextmanager
def _modules_follow_the_store():
    """While tracing, ``pyro.module`` networks compute with the param store's values (the
    graph's inputs): ``update_module_params=True`` for the trace; every module's own
    parameters are put back afterwards."""
    original = pyro.module
    touched: list = []

    def module(name, nn_module, update_module_params=False):
        touched.extend((sub, dict(sub._parameters)) for sub in nn_module.modules())
        return original(name, nn_module, update_module_params=True)

    pyro.module = module
    try:
        yield
    finally:
        pyro.module = original
        for sub, params in reversed(touched):
            sub._parameters.clear()
            sub._parameters.update(params)


@contextmanager
def _pyro_modules_bound_to(callables, names: list[str], values: list[torch.Tensor]):
    """While tracing, ``PyroModule`` params (autoguides) hold the bound values, so the
    module reads them from the param store without rewriting it; restored afterwards."""
    bound = dict(zip(names, values, strict=True))
    saved: list = []
    for fn in callables:
        if not isinstance(fn, torch.nn.Module):
            continue
        for sub in fn.modules():
            pyro_params = sub.__dict__.get("_pyro_params")
            context = sub.__dict__.get("_pyro_context")
            if not pyro_params or context is None or not context.used:
                continue
            for name in pyro_params:
                value = bound.get(sub._pyro_get_fullname(name))
                key = name + "_unconstrained"
                if value is not None and key in sub._parameters:
                    saved.append((sub, key, sub._parameters[key]))
                    sub._parameters[key] = value
    try:
        yield
    finally:
        for sub, key, original in reversed(saved):
            sub._parameters[key] = original


class CompiledLossAndGrads:
    """``(model, guide, args, kwargs) -> (loss, params)`` like ``ELBO._loss_and_grads``,
    compiled after a first eager call.

    :param elbo: the estimator (its ``_pairs``, ``_mean_elbo``, ``_mean_surrogate``).
    :param backend: backend name (``"eager"``, ``"jit"``, ``"inductor"`` or a plugin's).
    :param on_change: ``"recompile"`` (keep up to ``cache_size`` graphs) or ``"raise"``
        (:class:`StructureChangedError` naming what changed).
    :param on_dynamic: ``"eager"`` (warn once, run the eager estimator) or ``"raise"``
        when the model cannot be traced (e.g. it branches on tensor values).
    """

    def __init__(self, elbo, eager: Callable, backend: str = "inductor",
                 on_change: str = "recompile", on_dynamic: str = "eager", cache_size: int = 8):
        if on_change not in ("recompile", "raise") or on_dynamic not in ("eager", "raise"):
            raise ValueError("on_change must be 'recompile' or 'raise'; on_dynamic 'eager' or "
                             f"'raise'; got {on_change!r}, {on_dynamic!r}")
        self.elbo = elbo
        self.eager = eager
        self.backend = get_backend(backend)
        self.on_change = on_change
        self.on_dynamic = on_dynamic
        self.cache_size = cache_size
        self.graphs: OrderedDict = OrderedDict()
        self.param_names: list[str] | None = None
        self.dynamic_reason: str | None = None
        self.compiles = 0

    # --- tracing ----------------------------------------------------------------------
    def _traced(self, model, guide, kwargs, tensor_slots, args):
        names = self.param_names
        elbo = self.elbo

        def step(*flat):
            params, tensors = list(flat[:len(names)]), flat[len(names):]
            call_args = list(args)
            for slot, value in zip(tensor_slots, tensors, strict=True):
                call_args[slot] = value
            with _params_bound_to(names, params), _modules_follow_the_store(), \
                    _pyro_modules_bound_to((model, guide), names, params):
                loss, surrogate = elbo._objective(model, guide, tuple(call_args), kwargs)
                grads = torch.autograd.grad(-surrogate, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g
                     for p, g in zip(params, grads, strict=True)]
            return (loss, *grads)

        return step

    def _key(self, params, args, kwargs):
        return (tuple(_signature(p) for p in params),
                tuple(_signature(a) if torch.is_tensor(a) else ("value", repr(a)) for a in args),
                repr(sorted(kwargs.items())))

    def _compile(self, model, guide, params, args, kwargs):
        slots = [i for i, a in enumerate(args) if torch.is_tensor(a)]
        inputs = [p.detach().requires_grad_() for p in params] + [args[i] for i in slots]
        fn = self._traced(model, guide, kwargs, slots, args)
        try:
            with torch.random.fork_rng():
                gm = make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)
        except _Untraceable:
            raise
        except Exception as err:  # the model cannot be traced statically
            raise _Untraceable(f"{type(err).__name__}: {str(err).splitlines()[0]}") from err
        self.compiles += 1
        try:
            return self.backend.compile(gm, inputs), slots
        except NotImplementedError as err:
            raise _Untraceable(f"backend {self.backend.name!r}: {err}") from err

    def _verify(self, compiled, model, guide, params, args, kwargs, slots):
        """Run the new graph and the eager objective on the same random draws; a
        disagreement (state the trace could not see, e.g. module weights outside the
        param store) makes the model untraceable. Returns the graph's outputs."""
        devices = sorted({p.device.index for p in params if p.device.type == "cuda"})
        start = (torch.get_rng_state(),
                 [torch.cuda.get_rng_state(d) for d in devices])
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                outputs = compiled(*params, *[args[i] for i in slots])
        except Exception as err:  # a backend that compiles lazily fails here
            raise _Untraceable(f"backend {self.backend.name!r} failed: "
                               f"{type(err).__name__}: {str(err).splitlines()[0]}") from err
        with torch.enable_grad():
            loss, surrogate = self.elbo._objective(model, guide, args, kwargs)
            eager = torch.autograd.grad(-surrogate, params, allow_unused=True)
        close = bool(torch.isclose(outputs[0].detach(), loss.detach().to(outputs[0].dtype),
                                   rtol=1e-4, atol=1e-5).all())
        for got, want, p in zip(outputs[1:], eager, params, strict=True):
            want = torch.zeros_like(p) if want is None else want
            close = close and torch.allclose(got, want, rtol=1e-4, atol=1e-5)
        if not close:  # leave the random state as it was: the eager fallback redraws
            torch.set_rng_state(start[0])
            for d, state in zip(devices, start[1], strict=True):
                torch.cuda.set_rng_state(state, d)
            raise _Untraceable("the compiled graph disagrees with the eager step (the model "
                               "uses state outside pyro.param, e.g. weights of a module "
                               "registered with pyro.module)")
        return outputs

    # --- calling ----------------------------------------------------------------------
    def __call__(self, model, guide, args: tuple, kwargs: dict):
        if self.param_names is None or self.dynamic_reason is not None:
            loss, params = self.eager(model, guide, args, kwargs)
            if self.param_names is None:
                self.param_names = sorted(params)
            return loss, params
        store = pyro.get_param_store()
        try:
            params = [store._params[n] for n in self.param_names]
        except KeyError as missing:
            raise StructureChangedError(f"param {missing} left the param store since the "
                                        "step was compiled") from None
        key = self._key(params, args, kwargs)
        entry = self.graphs.get(key)
        if entry is None:
            if self.graphs and self.on_change == "raise":
                raise StructureChangedError(self._describe_change(key))
            try:
                entry = self._compile(model, guide, params, args, kwargs)
                outputs = self._verify(*entry[:1], model, guide, params, args, kwargs,
                                       entry[1])
            except _Untraceable as why:
                return self._go_eager(str(why), model, guide, args, kwargs)
            self.graphs[key] = entry
            while len(self.graphs) > self.cache_size:
                self.graphs.popitem(last=False)
        else:
            compiled, slots = entry
            with torch.no_grad():  # the graph computes its gradients itself
                outputs = compiled(*params, *[args[i] for i in slots])
        self.graphs.move_to_end(key)
        loss, *grads = outputs
        value = float(loss.detach())
        if value != value or value in (float("inf"), float("-inf")):
            if pyro.poutine.util.is_validation_enabled():
                # name the sites: one eager evaluation, nothing modified
                pairs = self.elbo._pairs(model, guide, args, kwargs)
                self.elbo._check_finite(value, pairs)
                raise NonFiniteLossError(value, [])
        for p, g in zip(params, grads, strict=True):
            p.grad = g if p.grad is None else p.grad + g
        return value, dict(zip(self.param_names, params, strict=True))

    def _go_eager(self, reason: str, model, guide, args, kwargs):
        if self.on_dynamic == "raise":
            raise StructureChangedError(f"the model cannot be compiled: {reason}")
        self.dynamic_reason = reason
        warnings.warn(f"{type(self.elbo).__name__}: running eagerly, the model cannot be "
                      f"compiled ({reason})", RuntimeWarning, stacklevel=4)
        return self.eager(model, guide, args, kwargs)

    def _describe_change(self, key) -> str:
        (old_params, old_args, old_kwargs), = [k for k in list(self.graphs)[-1:]]
        new_params, new_args, new_kwargs = key
        for what, old, new in (("param", old_params, new_params), ("argument", old_args,
                                                                    new_args)):
            for i, (a, b) in enumerate(zip(old, new, strict=False)):
                if a != b:
                    name = self.param_names[i] if what == "param" else f"#{i}"
                    return f"{what} {name} changed from {a} to {b} since the step was compiled"
            if len(old) != len(new):
                return f"number of {what}s changed from {len(old)} to {len(new)}"
        return f"keyword arguments changed from {old_kwargs} to {new_kwargs}"


class _Untraceable(Exception):  # noqa: N818
    pass
