"""Pure tensor math: no pyro import, no ``.item()``, no branching on tensor values.

Everything here takes and returns tensors so that ``compile/`` can trace it whole.
"""

from pyro_svi_ext.kernels.baselines import baseline_loss, decayed_average, reduce_costs
from pyro_svi_ext.kernels.elbo_terms import (
    float64_total,
    is_identically_zero,
    scale_and_mask,
    score_function_surrogate,
    sum_out_dims,
)

__all__ = [
    "baseline_loss",
    "decayed_average",
    "float64_total",
    "is_identically_zero",
    "reduce_costs",
    "scale_and_mask",
    "score_function_surrogate",
    "sum_out_dims",
]
