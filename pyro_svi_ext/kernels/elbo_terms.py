"""Tensor arithmetic shared by the ELBO estimators.

Shapes: a *batch-shaped* log-prob has the site's batch shape ``(..., P_k, ..., P_1)``
where plate ``k`` occupies dim ``-k``; event dims are already summed out.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import torch

Scale = float | torch.Tensor
Mask = torch.Tensor | bool | None


def is_identically_zero(x: object) -> bool:
    """True for the Python number ``0`` that stands for an absent term (not a zero tensor)."""
    return isinstance(x, numbers.Number) and x == 0


def scale_and_mask(value: torch.Tensor | float, scale: Scale = 1.0, mask: Mask = None):
    """Multiply ``value`` (batch-shaped) by ``scale`` and zero it where ``mask`` is False.

    ``value`` may be the number ``0`` (an absent term), returned unchanged. ``mask`` is
    ``None`` (keep all), a bool, or a bool tensor broadcastable to ``value``.
    """
    if is_identically_zero(value):
        return value
    if mask is None or mask is True:
        if isinstance(scale, numbers.Number) and scale == 1.0:
            return value
        return value * scale
    if mask is False:
        return torch.zeros_like(value)
    return torch.where(mask, value * scale, value.new_zeros(()))


def sum_out_dims(value: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Sum ``value`` over the negative ``dims`` it has, keeping them as size 1.

    Dims beyond ``value.dim()`` are absent (broadcast) and skipped.
    """
    present = [d for d in dims if -value.dim() <= d]
    if not present:
        return value
    return value.sum(present, keepdim=True)


def sum_dims(value: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Sum ``value`` over the negative ``dims`` it has, dropping them."""
    present = [d for d in dims if -value.dim() <= d]
    return value.sum(present) if present else value


def score_function_surrogate(
    downstream: Iterable[torch.Tensor], score_function: torch.Tensor
) -> torch.Tensor:
    """REINFORCE surrogate ``sum(cost * score_function)`` for one non-reparameterized site.

    ``downstream`` holds detached cost terms already reduced to shapes that broadcast
    against ``score_function`` (the site's batch shape); the result is a scalar.
    """
    cost = None
    for term in downstream:
        cost = term if cost is None else cost + term
    if cost is None:
        return score_function.new_zeros(())
    return (cost * score_function).sum()


def float64_total(terms: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum scalar tensors in float64 (a scalar), so large opposite terms cancel exactly
    enough; the empty sum is a float64 zero."""
    if not terms:
        return torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        try:
            return torch.stack(terms).sum(dtype=torch.float64)
        except RuntimeError:  # mixed dtypes or devices: convert one by one
            return torch.stack([t.to(torch.float64) for t in terms]).sum()


def sum_terms(terms: Sequence[torch.Tensor | float]) -> torch.Tensor | float:
    """``terms[0] + terms[1] + ...`` (the number ``0`` when empty), without the extra
    ``0 + terms[0]`` op that Python's ``sum`` records in the autograd graph."""
    if not terms:
        return 0
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total
