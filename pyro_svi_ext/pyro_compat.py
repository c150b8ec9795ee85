"""The one door to Pyro internals: everything the package reads or writes in Pyro beyond
its documented API goes through here, so a Pyro upgrade that moves one of them breaks
one module, and the compatibility matrix probes exactly these accessors in every cell
(:func:`probe`).

Where Pyro has public API for a need, the package uses that instead (e.g.
``ParamStoreDict.named_parameters()`` to read the store, ``poutine.unwrap``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyro
import pyro.optim
import torch

# --- messages and infer dicts ------------------------------------------------------------
#: infer keys Pyro's EnumMessenger and plates write on a message
ENUMERATE_DIM = "_enumerate_dim"
DIM_TO_ID = "_dim_to_id"
DO_NOT_TRACE = "_do_not_trace"


def is_subsample(fn: object) -> bool:
    """Whether a sample site's distribution is a plate's index draw (Pyro's private
    ``_Subsample``, or :func:`block_subsample`'s), not a random variable."""
    return type(fn).__name__ in ("_Subsample", "_BlockSubsample")


def block_subsample(fn: object, start: int, stop: int, draw: int | None,
                    within: int | None = None) -> object:
    """A plate's index draw like ``fn`` (a ``_Subsample`` of ``fn.size``), but from the
    block ``[start, stop)`` of the plate: all of it (``draw=None``), or ``draw`` indices
    drawn at random from it. With ``within=k``, the draw is the one ``fn`` itself would
    make of ``k`` indices (the same random numbers), of which it keeps positions
    ``[start, stop)``. ``full_block`` tells the recorder the indices are known."""
    block = _block_subsample_class()(fn.size, draw, device=fn.device)
    block.start, block.stop, block.within = start, stop, within
    block.full_block = draw is None and within is None
    return block


@functools.cache
def _block_subsample_class() -> type:
    from pyro.poutine.subsample_messenger import _Subsample

    class _BlockSubsample(_Subsample):
        def sample(self, sample_shape: torch.Size = ()) -> torch.Tensor:
            if self.within is not None:
                drawn = torch.randperm(self.size, device=self.device)[:self.within]
                return drawn[self.start:self.stop]
            if self.subsample_size is None:
                return torch.arange(self.start, self.stop, device=self.device)
            block = torch.randperm(self.stop - self.start, device=self.device)
            return self.start + block[:self.subsample_size]

    return _BlockSubsample


def enumerate_dim(infer: dict) -> int | None:
    """The batch dim Pyro's enumeration gave the site's own values, or None."""
    return infer.get(ENUMERATE_DIM)


def dim_ids(infer: dict) -> dict[int, int]:
    """Pyro's enumeration ids of the dims a site's value varies along (dim -> id)."""
    return infer.get(DIM_TO_ID, {})


def hidden_from_traces(infer: dict | None) -> bool:
    """Whether Pyro marked the message as not to be traced."""
    return bool(infer) and bool(infer.get(DO_NOT_TRACE))


# --- Pyro's code while a step is recorded --------------------------------------------------
@contextmanager
def pyro_sees_a_jit_trace() -> Iterator[None]:
    """While a compiled step is recorded, Pyro's own code that asks
    ``torch._C._get_tracing_state()`` is told a trace is running, as under Pyro's
    ``JitTrace_ELBO``: it then skips its value checks and value-dependent shortcuts
    (``pyro/distributions/stable.py`` tests ``near_hole.any()`` only outside a trace, and
    took every Stable model off the compiled path). torch's own callers (``nn.Module``'s
    ``__call__``) get the true state; the step is checked against the eager step, which
    runs Pyro's untraced branches, as always."""
    real = torch._C._get_tracing_state

    def state():
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller == "pyro" or caller.startswith("pyro."):
            return True
        return real()

    torch._C._get_tracing_state = state
    try:
        yield
    finally:
        torch._C._get_tracing_state = real


# --- the param store ------------------------------------------------------------------------
def store_tensors() -> dict[str, torch.Tensor]:
    """The param store's unconstrained tensors by name (the live dict: no copy)."""
    return pyro.get_param_store()._params


@contextmanager
def store_serving(names: list[str], values: list[torch.Tensor]) -> Iterator[dict]:
    """The param store serves ``values`` (unconstrained) for ``names``; everything in
    it, the name index included, is put back afterwards. Yields the served dict."""
    store = pyro.get_param_store()
    saved = dict(store._params)
    saved_names = dict(store._param_to_name)
    try:
        for name, value in zip(names, values, strict=True):
            store._params[name] = value
        yield store._params
    finally:
        store._params.clear()
        store._params.update(saved)
        store._param_to_name.clear()
        store._param_to_name.update(saved_names)


def store_constraints() -> dict:
    """The param store's constraint of each param by name (the live dict: no copy)."""
    return pyro.get_param_store()._constraints


# --- pyro.module and PyroModule ---------------------------------------------------------------
#: what ``pyro.module(name, net)`` puts between ``name`` and each parameter's path in the
#: param store (``"net$$$fc.weight"``)
MODULE_DIVIDER = pyro.params.param_store._MODULE_NAMESPACE_DIVIDER


def module_being_registered() -> torch.nn.Module | None:
    """The network whose parameters ``pyro.module`` is registering, read from its frame
    (for a handler of the ``param`` messages it sends); None outside ``pyro.module``."""
    code = pyro.primitives.module.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return frame.f_locals.get("nn_module")
        frame = frame.f_back
    return None


@contextmanager
def modules_read_from_store() -> Iterator[None]:
    """``pyro.module`` registers with ``update_module_params=True`` (networks compute with
    the param store's tensors); each module's own parameters are put back afterwards."""
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


def pyro_module_slots(module: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, str, str]]:
    """``(submodule, param-store name, attribute in its _parameters)`` for each parameter
    of each ``PyroModule`` in ``module`` that has been run: ``PyroParam`` s live as
    ``<name>_unconstrained``, plain ``nn.Parameter`` s under their own name."""
    for sub in module.modules():
        context = sub.__dict__.get("_pyro_context")
        if context is None or not context.used:
            continue
        keys = {name: name + "_unconstrained" for name in sub.__dict__.get("_pyro_params") or {}}
        keys.update((name, name) for name in list(sub._parameters)
                    if not name.endswith("_unconstrained"))
        for name, key in keys.items():
            if key in sub._parameters:
                yield sub, sub._pyro_get_fullname(name), key


def get_module_parameter(sub: torch.nn.Module, key: str) -> torch.Tensor:
    return sub._parameters[key]


def set_module_parameter(sub: torch.nn.Module, key: str, value: torch.Tensor) -> None:
    """Replace a parameter without ``nn.Module``'s type checks (a graph input)."""
    sub._parameters[key] = value


# --- PyroOptim ----------------------------------------------------------------------------------
def optim_constructor(optim: pyro.optim.PyroOptim) -> Callable:
    """The torch optimizer class a ``PyroOptim`` builds per parameter."""
    return optim.pt_optim_constructor


def per_param_optimizers(optim: pyro.optim.PyroOptim) -> dict:
    """The ``PyroOptim``'s torch optimizer of each parameter (created at its first step)."""
    return optim.optim_objs


def pending_optim_states(optim: pyro.optim.PyroOptim) -> dict:
    """State given by ``set_state`` for params without an optimizer yet, by param name,
    consumed at each one's first step (the live dict)."""
    return optim._state_waiting_to_be_consumed


def clip_args(optim: pyro.optim.PyroOptim, param: torch.Tensor):
    """The gradient clipping of ``param`` (a callable; None when it has none)."""
    return optim.grad_clip.get(param)


# --- the probe ----------------------------------------------------------------------------------
def _probe_messages() -> None:
    import pyro.distributions as dist
    from pyro.poutine import trace

    def model():
        with pyro.plate("p", 3, subsample_size=2):
            pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})

    nodes = trace(pyro.poutine.enum(model, first_available_dim=-2)).get_trace().nodes
    assert is_subsample(nodes["p"]["fn"]) and not is_subsample(nodes["z"]["fn"])
    block = block_subsample(nodes["p"]["fn"], 1, 3, 1)
    assert is_subsample(block) and 1 <= int(block.sample()) < 3
    assert enumerate_dim(nodes["z"]["infer"]) == -2
    assert -2 in dim_ids(nodes["z"]["infer"])
    assert not hidden_from_traces(nodes["z"]["infer"])


def _probe_store() -> None:
    pyro.clear_param_store()
    pyro.param("a", torch.ones(2))
    assert set(store_tensors()) == {"a"}
    with store_serving(["a"], [torch.zeros(2)]):
        assert float(pyro.param("a").detach().sum()) == 0.0
    assert float(pyro.param("a").detach().sum()) == 2.0
    assert store_constraints()["a"] is pyro.distributions.constraints.real


def _probe_modules() -> None:
    import pyro.distributions as dist
    from pyro.nn import PyroModule, PyroParam

    pyro.clear_param_store()
    with modules_read_from_store():
        pyro.module("net", torch.nn.Linear(2, 1))
    assert f"net{MODULE_DIVIDER}weight" in store_tensors()
    seen: list = []

    class Watch(pyro.poutine.messenger.Messenger):
        def _pyro_param(self, msg):
            seen.append(module_being_registered())

    net = torch.nn.Linear(2, 1)
    with Watch():
        pyro.module("watched", net)
    assert seen and all(found is net for found in seen)

    class Scaled(PyroModule):
        def __init__(self):
            super().__init__()
            self.scale = PyroParam(torch.ones(1), dist.constraints.positive)

        def forward(self):
            return self.scale

    scaled = Scaled()
    scaled()
    ((sub, name, key),) = list(pyro_module_slots(scaled))
    assert (name, key) == ("scale", "scale_unconstrained")
    set_module_parameter(sub, key, get_module_parameter(sub, key))


def _probe_optimizers() -> None:
    pyro.clear_param_store()
    optim = pyro.optim.Adam({"lr": 0.1}, {"clip_norm": 1.0})
    p = pyro.param("b", torch.ones(2)).unconstrained()
    p.grad = torch.ones(2)
    optim([p])
    assert optim_constructor(optim) is torch.optim.Adam
    assert p in per_param_optimizers(optim)
    optim.set_state({"later": {"state": {}, "param_groups": []}})
    assert "later" in pending_optim_states(optim)
    assert callable(clip_args(optim, p))


_PROBES = {"messages": _probe_messages, "param store": _probe_store,
           "pyro.module / PyroModule": _probe_modules, "PyroOptim": _probe_optimizers}


def probe() -> dict[str, str]:
    """Exercise every accessor above against the running Pyro: ``{group: "ok" or the
    error}`` (the compatibility matrix runs this in each cell)."""
    results: dict[str, str] = {}
    for name, check in _PROBES.items():
        try:
            check()
            results[name] = "ok"
        except Exception as err:  # a report, not a crash
            results[name] = f"{type(err).__name__}: {err}"
    pyro.clear_param_store()
    return results
