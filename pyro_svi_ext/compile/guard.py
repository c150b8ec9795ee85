"""The per-call guard of compiled steps: a key of what a graph was traced for, a small
cache of graphs by key (the last one checked first), and the sentence that says what
changed when a call does not match.

A key holds each param's, side-state tensor's and tensor argument's (shape, dtype,
device), the non-tensor arguments' reprs, the keyword arguments and the optimizer
layout. The site names of the model are checked when a graph is first verified, not on
every call.
"""

from __future__ import annotations

import operator
from collections import OrderedDict

import torch

#: ``t -> (t.shape, t.dtype, t.device)``, what the guard compares per tensor
signature = operator.attrgetter("shape", "dtype", "device")


def step_key(params: list, side: list, args: tuple, kwargs: dict, plan) -> tuple:
    """What a graph is valid for (see the module docstring)."""
    return (tuple(map(signature, params)), tuple(map(signature, side)),
            tuple(signature(a) if isinstance(a, torch.Tensor) else ("value", repr(a))
                  for a in args),
            repr(sorted(kwargs.items())) if kwargs else "",
            None if plan is None else plan.key)


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


def describe_change(old: tuple, new: tuple, param_names: list[str],
                    side_names: list[str]) -> str:
    """The first difference between two keys, in words."""
    old_params, old_side, old_args, old_kwargs, _ = old
    new_params, new_side, new_args, new_kwargs, _ = new
    for what, names, before, after in (("param", param_names, old_params, new_params),
                                       ("param", side_names, old_side, new_side),
                                       ("argument", None, old_args, new_args)):
        for i, (a, b) in enumerate(zip(before, after, strict=False)):
            if a != b:
                name = names[i] if names is not None else f"#{i}"
                return (f"{what} {name} changed from {_show(a)} to {_show(b)} since the "
                        "step was compiled")
        if len(before) != len(after):
            return f"number of {what}s changed from {len(before)} to {len(after)}"
    if old_kwargs != new_kwargs:
        return f"keyword arguments changed from {old_kwargs} to {new_kwargs}"
    return "the optimizer's hyper-parameters or state layout changed"


def _show(sig: tuple) -> str:
    if sig[0] == "value":
        return sig[1]
    shape, dtype, device = sig
    return f"({tuple(shape)}, {dtype}, {device})"
