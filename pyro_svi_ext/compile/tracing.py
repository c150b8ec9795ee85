"""What tracing a step needs: the param store, ``pyro.module`` networks and ``PyroModule``
autoguides serve the graph's input tensors while the step is traced, and everything is
put back afterwards."""

from __future__ import annotations

from contextlib import contextmanager

import pyro
import torch


class Untraceable(Exception):  # noqa: N818 - a reason, not an error the user sees
    """The step cannot be traced into a static graph (the message says why)."""


@contextmanager
def params_bound_to(names: list[str], values: list[torch.Tensor]):
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
            raise Untraceable("the step writes pyro's param store (e.g. a decaying-average "
                               "baseline or a new param), which a compiled graph cannot do")
    finally:
        store._params.clear()
        store._params.update(saved)
        store._param_to_name.clear()
        store._param_to_name.update(saved_names)
        pyro.enable_validation(validating)


@contextmanager
def modules_follow_the_store():
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
def pyro_modules_bound_to(callables, names: list[str], values: list[torch.Tensor]):
    """While tracing, ``PyroModule`` params and parameters (autoguides) hold the bound
    values, so the
    module reads them from the param store without rewriting it; restored afterwards."""
    bound = dict(zip(names, values, strict=True))
    saved: list = []
    for fn in callables:
        if not isinstance(fn, torch.nn.Module):
            continue
        for sub in fn.modules():
            context = sub.__dict__.get("_pyro_context")
            if context is None or not context.used:
                continue
            # PyroParams live as "<name>_unconstrained"; plain nn.Parameters (e.g.
            # AutoMultivariateNormal.loc) under their own name
            keys = {name: name + "_unconstrained"
                    for name in sub.__dict__.get("_pyro_params") or {}}
            keys.update((name, name) for name in list(sub._parameters)
                        if not name.endswith("_unconstrained"))
            for name, key in keys.items():
                value = bound.get(sub._pyro_get_fullname(name))
                if value is not None and key in sub._parameters:
                    saved.append((sub, key, sub._parameters[key]))
                    sub._parameters[key] = value
    try:
        yield
    finally:
        for sub, key, original in reversed(saved):
            sub._parameters[key] = original
