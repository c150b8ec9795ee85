"""DiCE expectations over labeled factors (the TraceEnum_ELBO objective's last step)."""

from __future__ import annotations

import math

import torch

from pyro_svi_ext.kernels.elbo_terms import sum_terms
from pyro_svi_ext.kernels.sumproduct import Factor, align, sumproduct, union_dims

#: keys x summed labels from which one adjoint pass beats one elimination per key.
#: Measured on Pyro's 675 enumeration tests: per key, 58 s in all; adjoint for every
#: ordinal, 504 s (an autograd.grad per small branch of sequential enumeration); while
#: a guide-side HMM at T=50 (100 keys x 50 labels) takes 1.1 s per key and 64 ms with
#: one adjoint pass (benchmarks/bench_enum_scale.py).
ADJOINT_ABOVE = 64


def _exp(factor: Factor) -> Factor:
    return Factor(factor.tensor.exp(), factor.dims)


def marginals(upstream: list[Factor], keys: dict[frozenset, tuple],
              plates: frozenset) -> dict[frozenset, Factor]:
    """``exp`` of the sum-product of the ``upstream`` log-factors over every label but a
    key's, for each key: ``{key: Factor}`` over the key's labels (any order). Labels in
    ``plates`` are product dims: kept per element, and summed over where a key lacks
    them. A result has the key's labels that some upstream factor has (the others do
    not vary it).

    Few keys or labels: one greedy elimination per key. Otherwise one contraction serves
    every key: the keys enter as zero log-factors; the gradient
    of the log partition function with respect to one of them is the normalized
    marginal of its labels (the adjoint of the sum-product: forward-backward on a
    chain), and times the partition function, the sum-product itself. The gradient is
    taken with ``create_graph`` so that the result stays differentiable in the upstream
    factors, as DiCE needs. Intermediates stay as small as the greedy elimination order
    allows, never the dense joint of the guide's variables."""
    order = list(keys)
    sizes = {d: n for f in upstream for d, n in zip(f.dims, f.tensor.shape, strict=True)}
    # a key's labels that no upstream factor has do not vary the probability
    shared = {k: tuple(d for d in keys[k] if d in sizes) for k in order}
    summed = set(sizes) - plates
    if len(order) * len(summed) < ADJOINT_ABOVE:
        return {k: _exp(sumproduct(upstream, set(sizes) - set(shared[k]))) for k in order}
    kept = tuple(d for d in sizes if d in plates)
    dims = {k: tuple(dict.fromkeys(shared[k] + kept)) for k in order}
    sample = upstream[0].tensor
    differentiable = torch.is_grad_enabled() and any(f.tensor.requires_grad
                                                     for f in upstream)
    with torch.enable_grad():
        queries = [torch.zeros([sizes[d] for d in dims[k]], dtype=sample.dtype,
                               device=sample.device, requires_grad=True) for k in order]
        factors = upstream + [Factor(q, dims[k]) for q, k in zip(queries, order, strict=True)]
        root = sumproduct(factors, set(union_dims(factors)) - plates)
        grads = torch.autograd.grad(root.tensor.sum(), queries, create_graph=differentiable)
    if not differentiable:
        root = Factor(root.tensor.detach(), root.dims)
    result = {}
    for k, g in zip(order, grads, strict=True):
        z = align(Factor(root.tensor.exp(), root.dims), dims[k])
        product = Factor(g * z, dims[k])
        extra = [dims[k].index(d) for d in kept if d not in keys[k]]
        result[k] = Factor(product.tensor.sum(extra), shared[k]) if extra else product
    return result


def expected_cost(costs: dict, log_probs: dict, log_denoms: dict):
    """DiCE expectation ``sum_t sum_cost E_q[cost]`` (a scalar, or ``0.0`` with no cost).

    ``costs``: ``{ordinal: [Factor]}``; ``log_probs``: ``{ordinal: [Factor]}`` of the guide
    (log-probabilities of enumerated variables, unit-valued score factors of sampled
    ones); ``log_denoms``: ``{ordinal: float}`` of sequential enumeration. A cost at
    ordinal ``t`` (a frozenset of plate labels) is weighted by the probability of its
    labels under the factors at ordinals ``<= t`` (:func:`marginals`). Terms are added
    without a leading ``0 +`` and scaled only where a sequential denominator applies
    (each op saved is a node less in every backward pass)."""
    terms = []
    for t, cost_factors in costs.items():
        denom = sum(v for o, v in log_denoms.items() if not o <= t)
        upstream = [f for o, fs in log_probs.items() if o <= t for f in fs]
        if not upstream:
            term = sum_terms([cost.tensor.sum() for cost in cost_factors])
        else:
            keys: dict = {}
            for cost in cost_factors:
                keys.setdefault(frozenset(cost.dims), cost.dims)
            probs = marginals(upstream, keys, t)
            weighted = []
            for cost in cost_factors:
                p = align(probs[frozenset(cost.dims)], cost.dims)
                p, c = torch.broadcast_tensors(p, align(cost, cost.dims))
                c = torch.where(p > 0, c, torch.zeros((), dtype=c.dtype, device=c.device))
                weighted.append((p * c).sum())
            term = sum_terms(weighted)
        terms.append(term if denom == 0 else math.exp(-denom) * term)
    return sum_terms(terms) if terms else 0.0
