"""Log-space sum-product contraction of labeled factors over plates (tensor variable
elimination, Obermeyer et al. 2019).

A :class:`Factor` is a tensor whose dims carry labels: enumeration dims (summed out,
log-sum-exp) and plate dims (product-reduced, i.e. summed in log space). Factors live in
*ordinals*: frozensets of plate labels. Contraction eliminates enumeration dims leaf
ordinal first, so that memory stays linear in the length of a chain (e.g. an HMM),
using a greedy elimination order chosen from shapes only: no host sync, no branching on
tensor values.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import torch

Label = Hashable


@dataclass(frozen=True, eq=False)
class Factor:
    """``tensor`` with one label per dim (``len(dims) == tensor.dim()``)."""

    tensor: torch.Tensor
    dims: tuple

    def size(self, label: Label) -> int:
        return self.tensor.shape[self.dims.index(label)]


def pack(tensor: torch.Tensor, labels: dict[int, Label]) -> Factor:
    """Label a right-aligned tensor by position: ``labels`` maps negative dims to labels.

    Size-1 dims are dropped. ``ValueError`` if a dim of size > 1 has no label.
    """
    dims, keep = [], []
    for pos in range(-tensor.dim(), 0):
        if tensor.shape[pos] == 1:
            continue
        if pos not in labels:
            raise ValueError(f"dim {pos} of size {tensor.shape[pos]} belongs to no plate "
                             "and no enumerated variable")
        dims.append(labels[pos])
        keep.append(pos + tensor.dim())
    squeezed = tensor.reshape([tensor.shape[i] for i in keep]) if len(keep) < tensor.dim() \
        else tensor
    return Factor(squeezed, tuple(dims))


def align(factor: Factor, dims: tuple) -> torch.Tensor:
    """``factor.tensor`` permuted and reshaped to broadcast against the label order
    ``dims`` (a superset of ``factor.dims``)."""
    order = [factor.dims.index(d) for d in dims if d in factor.dims]
    tensor = factor.tensor
    if order != list(range(len(order))):
        tensor = tensor.permute(order)
    shape = [factor.size(d) if d in factor.dims else 1 for d in dims]
    return tensor.reshape(shape)


def union_dims(factors: Iterable[Factor]) -> tuple:
    seen: dict = {}
    for f in factors:
        for d in f.dims:
            seen.setdefault(d, None)
    return tuple(seen)


def combine(factors: list[Factor]) -> Factor:
    """Log-space product (broadcast sum) of factors over the union of their dims."""
    if len(factors) == 1:
        return factors[0]
    dims = union_dims(factors)
    total = align(factors[0], dims)
    for f in factors[1:]:
        total = total + align(f, dims)
    sizes = {}
    for f in factors:
        sizes.update(zip(f.dims, f.tensor.shape, strict=True))
    return Factor(total.expand([sizes[d] for d in dims]), dims)


def logsumexp_out(factor: Factor, labels: Iterable[Label]) -> Factor:
    """Sum (in probability space) over ``labels`` present in the factor."""
    idx = [factor.dims.index(d) for d in labels if d in factor.dims]
    if not idx:
        return factor
    return Factor(torch.logsumexp(factor.tensor, dim=idx),
                  tuple(d for i, d in enumerate(factor.dims) if i not in idx))


def product_out(factor: Factor, labels: Iterable[Label]) -> Factor:
    """Product (in probability space; a sum of logs) over plate ``labels`` present."""
    idx = [factor.dims.index(d) for d in labels if d in factor.dims]
    if not idx:
        return factor
    return Factor(factor.tensor.sum(dim=idx),
                  tuple(d for i, d in enumerate(factor.dims) if i not in idx))


def _union_size(factors: Iterable[Factor], skip: Label) -> int:
    sizes = {}
    for f in factors:
        sizes.update(zip(f.dims, f.tensor.shape, strict=True))
    sizes.pop(skip, None)
    return math.prod(sizes.values())


def sumproduct(factors: list[Factor], sum_labels: Iterable[Label]) -> Factor:
    """Product of ``factors`` with ``sum_labels`` summed out, eliminating one label at a
    time, the one whose intermediate is smallest first (the contraction-order planner,
    a greedy variable elimination with a heap of stale-checked costs)."""
    live = dict(enumerate(factors))
    holders: dict[Label, set[int]] = {}
    wanted = set(sum_labels)
    for i, f in live.items():
        for d in f.dims:
            if d in wanted:
                holders.setdefault(d, set()).add(i)

    def cost(label: Label) -> int:
        return _union_size((live[i] for i in holders[label]), label)

    heap = [(cost(d), repr(d), d) for d in holders]
    heapq.heapify(heap)
    next_id = len(live)
    while heap:
        c, key, label = heapq.heappop(heap)
        if label not in holders:
            continue
        current = cost(label)
        if current != c:
            heapq.heappush(heap, (current, key, label))
            continue
        ids = sorted(holders.pop(label))
        involved = [live.pop(i) for i in ids]
        reduced = logsumexp_out(combine(involved), [label])
        live[next_id] = reduced
        touched = {d for f in involved for d in f.dims if d in holders}
        for d in touched:
            holders[d].difference_update(ids)
            holders[d].add(next_id)
            heapq.heappush(heap, (cost(d), repr(d), d))
        next_id += 1
    if not live:
        return Factor(torch.zeros(()), ())
    return combine([live[i] for i in sorted(live)])


def partition(factors: list[Factor], sum_labels: set) -> list[tuple[list[Factor], set]]:
    """Split factors into groups connected through shared ``sum_labels``."""
    groups: list[tuple[list[Factor], set]] = []
    for f in factors:
        labels = sum_labels.intersection(f.dims)
        joined = [g for g in groups if g[1] & labels]
        members, dims = [f], set(labels)
        for g in joined:
            members = g[0] + members
            dims |= g[1]
            groups.remove(g)
        groups.append((members, dims))
    return groups


class PlateStructureError(NotImplementedError):
    """Enumerated variables connect plates that are not nested (no tree structure)."""


def contract_component(tree: dict[frozenset, list[Factor]], sum_labels: set):
    """Contract one connected component; returns ``(ordinal, factor)`` at the
    component's smallest ordinal. ``tree`` maps ordinals (frozensets of plate labels)
    to factors and is consumed."""
    tree = {t: list(fs) for t, fs in tree.items()}
    home: dict[Label, frozenset] = {}
    for t, fs in tree.items():
        for f in fs:
            for d in sum_labels.intersection(f.dims):
                home[d] = home.get(d, t) & t
    dims_at: dict[frozenset, set] = {}
    for d, t in home.items():
        dims_at.setdefault(t, set()).add(d)
    root = frozenset.intersection(*tree)
    while any(dims_at.values()):
        leaf = max(tree, key=len)
        leaf_factors = tree.pop(leaf)
        leaf_dims = dims_at.pop(leaf, set())
        for members, dims in partition(leaf_factors, leaf_dims):
            factor = sumproduct(members, dims)
            if leaf == root:
                parent = leaf
            else:
                pending = sum_labels.intersection(factor.dims)
                parents = [t for t, ds in dims_at.items() if ds & pending]
                parent = frozenset().union(*parents) if parents else root
                if parent == leaf:
                    names = sorted(str(d[-1]) if isinstance(d, tuple) else str(d)
                                   for d in leaf)
                    raise PlateStructureError(
                        "Expected tree-structured plate nesting, but found dependencies on "
                        f"independent plates {names}: enumerated variables link plates "
                        "that are not nested. Make one of them a sequential plate (its "
                        "cost is exponential in its size)")
                factor = product_out(factor, leaf - parent)
            tree.setdefault(parent, []).append(factor)
    factors = [product_out(f, t - root) for t, fs in tree.items() for f in fs]
    return root, combine(factors) if len(factors) > 1 else factors[0]


def contract_tree(tree: dict[frozenset, list[Factor]], sum_labels: set):
    """Sum ``sum_labels`` out of a plated factor graph, keeping plates where possible.

    Returns ``{ordinal: [factor, ...]}``: one factor per connected component, at the
    smallest ordinal of that component (its remaining plate dims not yet reduced).
    """
    home = {id(f): t for t, fs in tree.items() for f in fs}
    everything = [f for fs in tree.values() for f in fs]
    result: dict[frozenset, list[Factor]] = {}
    for members, dims in partition(everything, set(sum_labels)):
        component: dict[frozenset, list[Factor]] = {}
        for f in members:
            component.setdefault(home[id(f)], []).append(f)
        ordinal, factor = contract_component(component, dims)
        result.setdefault(ordinal, []).append(factor)
    return result


def log_partition(tree: dict[frozenset, list[Factor]], sum_labels: set) -> torch.Tensor:
    """``log`` of the total mass of the factor graph: every dim reduced (a scalar)."""
    total = None
    for factors in contract_tree(tree, sum_labels).values():
        for f in factors:
            value = f.tensor.sum()
            total = value if total is None else total + value
    return torch.zeros(()) if total is None else total


def label_sizes(tree: dict[frozenset, list[Factor]]) -> dict:
    sizes: dict = {}
    for fs in tree.values():
        for f in fs:
            sizes.update(zip(f.dims, f.tensor.shape, strict=True))
    return sizes


def query_marginal(tree: dict[frozenset, list[Factor]], sum_labels: set, target: Label,
                   target_ordinal: frozenset) -> Factor:
    """Log marginal probabilities of the enumerated variable ``target`` (normalized along
    it), per element of its plates: a factor over ``(target, *plates)``.

    Computed as the gradient of the log partition function with respect to a zero
    factor on those dims (the adjoint of the contraction); not differentiable further.
    """
    sizes = label_sizes(tree)
    dims = (target, *sorted((p for p in target_ordinal if p in sizes), key=repr))
    sample = next(f.tensor for fs in tree.values() for f in fs)
    query = torch.zeros([sizes[d] for d in dims], dtype=sample.dtype, device=sample.device,
                        requires_grad=True)
    extended = {t: list(fs) for t, fs in tree.items()}
    extended.setdefault(target_ordinal, []).append(Factor(query, dims))
    with torch.enable_grad():
        log_z = log_partition(extended, set(sum_labels))
        (probs,) = torch.autograd.grad(log_z, query)
    return Factor(probs.log(), dims)


def clamp(factor: Factor, label: Label, index: Factor) -> Factor:
    """``factor`` with variable ``label`` fixed to ``index`` (an integer factor over some
    plate labels): the ``label`` dim is gathered away."""
    if label not in factor.dims:
        return factor
    dims = tuple(dict.fromkeys(factor.dims + index.dims))
    sizes = dict(zip(factor.dims, factor.tensor.shape, strict=True))
    sizes.update(zip(index.dims, index.tensor.shape, strict=True))
    values = align(factor, dims).expand([sizes[d] for d in dims])
    axis = dims.index(label)
    idx_shape = [1 if d == label else sizes[d] for d in dims]
    idx = align(index, dims).expand(idx_shape)
    gathered = torch.gather(values, axis, idx).squeeze(axis)
    return Factor(gathered, tuple(d for d in dims if d != label))
