"""The per-call guard of compiled steps: a key of what a graph was traced for, a small
cache of graphs by key (the last one checked first), and the sentence that says what
changed when a call does not match.

A key holds each param's (shape, dtype, device, requires_grad), each side-state
tensor's and tensor argument's (shape, dtype, device), the non-tensor arguments' reprs,
the keyword arguments, the state of the modules the step runs (training flags, buffer
signatures: :mod:`.module_state`), the global state a trace reads (grad mode, default
dtype, Pyro's validation flag) and the optimizer layout, last. The site names of the
model are checked when a graph is first verified, not on every call.
"""

from __future__ import annotations

import operator
from collections import OrderedDict

import torch
from pyro.poutine.util import is_validation_enabled

#: ``t -> (t.shape, t.dtype, t.device)``, what the guard compares per tensor
signature = operator.attrgetter("shape", "dtype", "device")

#: a param's signature: also whether it is trained (C-level, as the per-step key must
#: be cheap: 0.25 us a param)
param_signature = operator.attrgetter("shape", "dtype", "device", "requires_grad")


#: leaves keyed by their value
_VALUE_TYPES = (int, bool, str, bytes, complex, type(None), type(Ellipsis))


def leaf_key(leaf, by_value: bool) -> tuple:
    """An argument leaf's part of the key (:mod:`.arguments`): a tensor's signature; a
    float as a float (its value only when ``by_value``); a simple value by value; any
    other object by identity (a numpy array's ``repr`` is a summary)."""
    if isinstance(leaf, torch.Tensor):
        return signature(leaf)
    if type(leaf) is float:
        return ("value", repr(leaf)) if by_value else ("float", "a float")
    if isinstance(leaf, _VALUE_TYPES):
        return ("value", repr(leaf))
    return ("object", type(leaf).__name__, id(leaf))


def spec_key(spec) -> str:
    """The arguments' structure (None or True: positional arguments, no containers)."""
    return "" if spec is None or spec is True else str(spec)


def global_state() -> tuple:
    """What a traced step read from global switches: grad mode, the default dtype
    (``torch.tensor(0.5)`` in a model), Pyro's validation flag."""
    return torch.is_grad_enabled(), torch.get_default_dtype(), is_validation_enabled()


def step_key(params: list, side: list, leaves: list, spec, plan, state: tuple = (),
             valued_floats: set = frozenset()) -> tuple:
    """What a graph is valid for (see the module docstring): ``leaves`` and ``spec``
    are the call's arguments (:func:`.arguments.flatten`; ``spec`` True: every leaf is
    a tensor), ``state`` the module state's key and :func:`global_state`,
    ``valued_floats`` the leaf positions of float arguments keyed by value."""
    if spec is True:  # tensors only, positional: the common call, at C speed
        arguments = tuple(map(signature, leaves))
    else:
        arguments = tuple(signature(a) if isinstance(a, torch.Tensor) else
                          leaf_key(a, i in valued_floats) for i, a in enumerate(leaves))
    return (tuple(map(param_signature, params)), tuple(map(signature, side)), arguments,
            spec_key(spec), state, None if plan is None else plan.key)


class GraphCache:
    """Up to ``size`` graphs by key, least recently used dropped first; the last hit is
    checked before any dict lookup (the usual call is like the previous one)."""

    def __init__(self, size: int):
        self.size = size
        self.graphs: OrderedDict = OrderedDict()
        self._last: tuple | None = None

    def __len__(self) -> int:
        return len(self.graphs)

    def __bool__(self) -> bool:
        return bool(self.graphs)

    def __iter__(self):
        return iter(self.graphs)

    def get(self, key):
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        if last is not None and last[0] in self.graphs:  # it was the most recent
            self.graphs.move_to_end(last[0])
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.move_to_end(key)
            self._last = (key, graph)
        return graph

    def put(self, key, graph) -> None:
        self.graphs[key] = graph
        self._last = (key, graph)
        while len(self.graphs) > self.size:
            self.graphs.popitem(last=False)

    def values(self):
        return self.graphs.values()

    def newest_key(self):
        return next(reversed(self.graphs))

    def remove(self, key) -> None:
        """Forget the graph under ``key`` (the next call with it traces again)."""
        self.graphs.pop(key, None)
        if self._last is not None and self._last[0] == key:
            self._last = None

    def rekey(self, old, new) -> None:
        """The graph under ``old`` (if any) is kept under ``new`` instead."""
        if old in self.graphs:
            self.graphs[new] = self.graphs.pop(old)
            self._last = (new, self.graphs[new])


_GLOBALS = ("grad mode", "the default dtype", "Pyro's validation flag")


def describe_change(old: tuple, new: tuple, param_names: list[str],
                    side_names: list[str], module_names: list[str] = (),
                    buffer_names: list[str] = (), argument_names: list[str] = ()) -> str:
    """The first difference between two keys, in words."""
    old_params, old_side, old_args, old_kwargs, old_state, _ = old
    new_params, new_side, new_args, new_kwargs, new_state, _ = new
    for what, names, before, after in (("param", param_names, old_params, new_params),
                                       ("param", side_names, old_side, new_side),
                                       ("", argument_names, old_args, new_args)):
        for i, (a, b) in enumerate(zip(before, after, strict=False)):
            if a != b:
                name = names[i] if i < len(names) else f"argument {i}"
                if a[0] == "float" and b[0] == "value":
                    return (f"float {name} is keyed by its value from now on ({b[1]}): the "
                            "model compares it or reads it as a plain number")
                return (f"{what} {name} changed from {_show(a)} to {_show(b)} since the "
                        "step was compiled").lstrip()
        if len(before) != len(after):
            return f"number of {what or 'argument'}s changed from {len(before)} to {len(after)}"
    if old_kwargs != new_kwargs:
        return f"the arguments' structure changed from {old_kwargs} to {new_kwargs}"
    if old_state != new_state:
        return _state_change(old_state, new_state, module_names, buffer_names)
    return "the optimizer's hyper-parameters or state layout changed"


def _state_change(old: tuple, new: tuple, module_names, buffer_names) -> str:
    (old_flags, old_buffers), old_globals = old
    (new_flags, new_buffers), new_globals = new
    if len(old_flags) != len(new_flags):
        return "the step runs other modules than when it was compiled"
    for name, a, b in zip(module_names, old_flags, new_flags, strict=False):
        if a != b:
            return f"module {name} was switched to {'train' if b else 'eval'} mode"
    for name, a, b in zip(buffer_names, old_buffers, new_buffers, strict=False):
        if a != b:
            return f"buffer {name} changed from {_show(a)} to {_show(b)}"
    for name, a, b in zip(_GLOBALS, old_globals, new_globals, strict=True):
        if a != b:
            return f"{name} changed from {a} to {b}"
    return "the modules' state changed"


def _show(sig: tuple) -> str:
    if sig[0] in ("value", "float"):
        return sig[1]
    if sig[0] == "object":
        return f"a {sig[1]} object (id {sig[2]})"
    shape, dtype, device, *grad = sig
    trained = "" if not grad else (", trained" if grad[0] else ", frozen")
    return f"({tuple(shape)}, {dtype}, {device}{trained})"
