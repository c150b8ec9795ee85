"""Pure tensor math: no pyro import, no reads of tensor values into Python, no branching
on tensor values.

Everything here takes and returns tensors so that ``compile/`` can trace it whole.
"""

from pyro_svi_ext.kernels.baselines import baseline_loss, decayed_average, reduce_costs
from pyro_svi_ext.kernels.elbo_terms import (
    float64_total,
    is_identically_zero,
    scale_and_mask,
    score_function_surrogate,
    sum_dims,
    sum_out_dims,
    sum_terms,
)
from pyro_svi_ext.kernels.weights import (
    effective_sample_size,
    log_mean_exp,
    normalized_log_weights,
    renyi_weights,
    waic,
)

__all__ = [
    "baseline_loss",
    "decayed_average",
    "effective_sample_size",
    "float64_total",
    "is_identically_zero",
    "log_mean_exp",
    "normalized_log_weights",
    "reduce_costs",
    "renyi_weights",
    "scale_and_mask",
    "score_function_surrogate",
    "sum_dims",
    "sum_out_dims",
    "sum_terms",
    "waic",
]
