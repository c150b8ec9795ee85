"""Baseline arithmetic for score-function gradient estimators (tensors only).

Shapes: ``cost``, ``baseline`` and ``average`` all have the batch shape of the
non-reparameterized site they belong to (its plate dims kept, others summed).
"""

from __future__ import annotations

import torch

from pyro_svi_ext.kernels.elbo_terms import sum_out_dims


def decayed_average(average: torch.Tensor, cost: torch.Tensor, beta: float) -> torch.Tensor:
    """Exponential moving average ``beta * average + (1 - beta) * cost``, no gradient."""
    with torch.no_grad():
        return (1 - beta) * cost + beta * average


def baseline_loss(cost: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """Squared error that trains a learned baseline toward the (detached) cost: a scalar."""
    return torch.pow(cost.detach() - baseline, 2.0).sum()


def reduce_costs(terms: list[tuple[torch.Tensor, list[int]]]) -> torch.Tensor:
    """Sum cost terms after summing each over its listed negative dims.

    Each term is ``(tensor, dims)``; summed dims stay as size 1, then leading size-1 dims
    are dropped, so a site outside every plate gets a cost of shape ``()``. The result
    broadcasts over all terms' shapes.
    """
    total = None
    for value, dims in terms:
        value = sum_out_dims(value, dims)
        while value.dim() and value.shape[0] == 1:
            value = value.squeeze(0)
        total = value if total is None else total + value
    return total
