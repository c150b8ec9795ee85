"""Trace_ELBO: the standard Monte Carlo ELBO with plate-wise Rao-Blackwellized
score-function terms for non-reparameterized guide sites."""

from __future__ import annotations

import torch

from pyro_svi_ext.estimators.base import ELBO
from pyro_svi_ext.kernels import (
    is_identically_zero,
    score_function_surrogate,
    sum_out_dims,
    sum_terms,
)
from pyro_svi_ext.trace import TracePair


def log_ratio_by_plates(pair: TracePair) -> dict[frozenset, torch.Tensor]:
    """Detached ``log p - log q`` per model site, summed within groups of equal plates.

    Keys are frozensets of plate frames; values are batch-shaped tensors.
    """
    groups: dict[frozenset, torch.Tensor] = {}
    guide = pair.guide
    for name, site in pair.model.items():
        term = site.log_prob.detach()
        if not site.is_observed and name in guide:
            term = term - guide[name].log_prob.detach()
        key = site.plate_frames
        groups[key] = groups[key] + term if key in groups else term
    return groups


def downstream_of_plates(groups: dict[frozenset, torch.Tensor], frames: frozenset):
    """Each log-ratio group with the plates outside ``frames`` summed out."""
    for group_frames, value in groups.items():
        dims = [f.dim for f in group_frames if f not in frames]
        yield sum_out_dims(value, dims) if dims else value


class Trace_ELBO(ELBO):
    """Monte Carlo ELBO over sample sites (``pyro.infer.Trace_ELBO``'s contract).

    Reparameterized guide sites contribute pathwise gradients; a non-reparameterized
    site ``z`` contributes ``sum(cost_z * log q(z))`` where ``cost_z`` is the total
    ``log p - log q`` with the plates ``z`` is not inside summed out, and the rest kept
    element-wise (Rao-Blackwellization through ``plate`` independence only; see
    ``TraceGraph_ELBO`` for the finer one).

    :meth:`loss`, :meth:`loss_and_grads` and :meth:`differentiable_loss` average over
    ``num_particles``. A subclass that overrides Pyro's protected hooks
    (``_differentiable_loss_particle(model_trace, guide_trace)``, ``_get_trace``,
    ``_get_traces``) computes through them, on ``pyro.poutine.Trace`` objects, eagerly.
    Errors are those of :class:`~pyro_svi_ext.estimators.base.ELBO`,
    plus ``ValueError``/``RuntimeError`` from a distribution, re-raised with the site name.
    """

    #: a subclass's overrides of Pyro's hooks (``_differentiable_loss_particle``,
    #: ``_get_trace``, ...) are used, as Pyro's Trace_ELBO uses them
    _honours_pyro_hooks = True

    def particle_surrogate(self, pair: TracePair) -> torch.Tensor:
        surrogate = sum_terms([s.log_prob_sum for s in pair.model.values()])
        groups = None
        for site in pair.guide.values():
            if not is_identically_zero(site.entropy_term):
                surrogate = surrogate - site.entropy_sum
            if not site.reparameterized:
                if groups is None:
                    groups = log_ratio_by_plates(pair)
                surrogate = surrogate + score_function_surrogate(
                    downstream_of_plates(groups, site.plate_frames), site.score_function
                )
        return surrogate
