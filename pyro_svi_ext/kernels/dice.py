"""DiCE expectations over labeled factors (the TraceEnum_ELBO objective's last step)."""

from __future__ import annotations

import math

import torch

from pyro_svi_ext.kernels.sumproduct import Factor, align, sumproduct, union_dims


def expected_cost(costs: dict, log_probs: dict, log_denoms: dict):
    """DiCE expectation ``sum_t sum_cost E_q[cost]`` (a scalar, or ``0.0`` with no cost).

    ``costs``: ``{ordinal: [Factor]}``; ``log_probs``: ``{ordinal: [Factor]}`` of the guide
    (log-probabilities of enumerated variables, unit-valued score factors of sampled
    ones); ``log_denoms``: ``{ordinal: float}`` of sequential enumeration. A cost at
    ordinal ``t`` is weighted by the factors at ordinals ``<= t``.

    The probability of a cost's dims is the guide factors upstream of it with every
    other dim summed out by the greedy elimination planner (:func:`sumproduct`): the
    intermediates stay as small as the factors, never the dense joint of every
    enumerated or locally sampled guide site."""
    total = 0.0
    for t, cost_factors in costs.items():
        denom = sum(v for o, v in log_denoms.items() if not o <= t)
        scale = math.exp(-denom)
        upstream = [f for o, fs in log_probs.items() if o <= t for f in fs]
        labels = set(union_dims(upstream))
        probs: dict = {}
        for cost in cost_factors:
            if not upstream:
                total = total + scale * cost.tensor.sum()
                continue
            key = frozenset(cost.dims)
            if key not in probs:
                probs[key] = sumproduct(upstream, labels - key)
            prob = probs[key]
            dims = tuple(dict.fromkeys(cost.dims + prob.dims))
            p = align(Factor(prob.tensor.exp(), prob.dims), dims)
            c = align(cost, dims)
            p, c = torch.broadcast_tensors(p, c)
            c = torch.where(p > 0, c, torch.zeros((), dtype=c.dtype, device=c.device))
            total = total + scale * (p * c).sum()
    return total
