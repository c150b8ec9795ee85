"""Provenance tracking: which non-reparameterized sample values a tensor was computed from.

A :class:`TrackedTensor` carries a frozenset of site names; every torch op on tracked
inputs returns outputs tracked with the union of the inputs' names. TraceGraph_ELBO uses
it to find, for each non-reparameterized site, the log-prob terms downstream of it
(those computed from its value), which captures sequential order, ``plate`` and
sequential-plate independence at once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

EMPTY: frozenset = frozenset()


class TrackedTensor(torch.Tensor):
    """A tensor view that remembers the site names (``_sources``) it was computed from."""

    _plain: torch.Tensor
    _sources: frozenset

    @staticmethod
    def __new__(cls, data: torch.Tensor, sources: frozenset):
        view = data.as_subclass(cls)
        view._plain = data
        view._sources = sources
        return view

    def __repr__(self) -> str:
        return f"TrackedTensor(sources={sorted(self._sources)}, {self._plain!r})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        (plain_args, plain_kwargs), sources = split([args, kwargs or {}])
        return track(func(*plain_args, **plain_kwargs), sources)


def _split_leaf(x: Any) -> tuple[Any, frozenset]:
    if isinstance(x, TrackedTensor):
        return x._plain, x._sources
    return x, EMPTY


def split(x: Any) -> tuple[Any, frozenset]:
    """``(x without tracking, union of the sources found in x)`` for nested containers."""
    if isinstance(x, TrackedTensor):
        return x._plain, x._sources
    if isinstance(x, torch.Tensor) or not isinstance(x, (list, tuple, dict)):
        return x, EMPTY
    leaves, spec = tree_flatten(x)
    plain, sources = [], EMPTY
    for leaf in leaves:
        value, found = _split_leaf(leaf)
        plain.append(value)
        sources = sources | found
    return tree_unflatten(plain, spec), sources


def track(x: Any, sources: frozenset) -> Any:
    """``x`` with every tensor leaf tracked as computed from ``sources`` (added to any
    sources it already has); ``x`` itself when ``sources`` is empty."""
    if not sources:
        return x
    if isinstance(x, TrackedTensor):
        return TrackedTensor(x._plain, x._sources | sources)
    if isinstance(x, torch.Tensor):
        return TrackedTensor(x, sources)
    if isinstance(x, (list, tuple, dict)):
        leaves, spec = tree_flatten(x)
        return tree_unflatten([track(leaf, sources) for leaf in leaves], spec)
    return x


def sources_of(x: Any) -> frozenset:
    """The site names ``x`` was computed from."""
    return split(x)[1]


def untrack(x: Any) -> Any:
    """``x`` without provenance (a plain tensor or container)."""
    return split(x)[0]
