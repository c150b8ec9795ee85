"""TraceEnum_ELBO: exact enumeration of discrete sites (parallel or sequential) with a
DiCE estimator for the sampled ones, contracting model-enumerated variables with the
package's own sum-product kernel."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pyro.poutine as poutine
from pyro.poutine.util import is_validation_enabled

from pyro_svi_ext.estimators.base import ELBO
from pyro_svi_ext.kernels import is_identically_zero
from pyro_svi_ext.kernels.dice import expected_cost
from pyro_svi_ext.kernels.sumproduct import Factor, contract_tree, query_marginal
from pyro_svi_ext.protocol import Estimate
from pyro_svi_ext.trace import TracePair
from pyro_svi_ext.trace.backward_sample import BackwardSampleMessenger, marginal_dist
from pyro_svi_ext.trace.enum import enum_label, enum_pairs, is_enumerated, ordinal, packed
from pyro_svi_ext.trace.factors import (
    check_plate_restriction,
    guide_dice_factors,
    model_factors,
    warn_invalid_enum_dependencies,
    warn_sample_counts,
)
from pyro_svi_ext.trace.recorder import run_recorded


class _GuideRun:
    """What :func:`run_recorded` replays from: the guide sites of a pair."""

    def __init__(self, pair: TracePair):
        self.sites = pair.guide
        self.subsamples: dict = {}


class TraceEnum_ELBO(ELBO):
    """ELBO with exhaustive enumeration of discrete sites (``pyro.infer.TraceEnum_ELBO``'s
    contract).

    Guide sites marked ``infer={"enumerate": "parallel"}`` or ``"sequential"`` (or via
    ``pyro.infer.config_enumerate``) are summed exactly under the guide; model sites
    marked ``"parallel"`` and absent from the guide are summed out of the model by
    tensor variable elimination over plates (``pyro.markov`` chains keep memory linear
    in their length); every other site is sampled, with DiCE score factors for the
    non-reparameterized ones. ``infer={"num_samples": n}`` on a parallel site samples
    ``n`` values instead of enumerating.

    ``max_plate_nesting`` is guessed (one extra run of guide and model) when left at
    ``inf``. Errors: ``ValueError`` when a site outside a
    plate depends on a variable enumerated inside it (both named), when sites touching
    model-enumerated variables have different ``poutine.scale``; ``NotImplementedError``
    for plates linked without nesting; :meth:`differentiable_loss` raises ``ValueError``
    when the ELBO cannot be differentiated (e.g. identically zero). Warns (under
    validation, ``strict_enumeration_warning``) when nothing is enumerated.
    """

    additive_over_sites = False

    # --- particles ------------------------------------------------------------------
    def particles(self, model: Callable, guide: Callable, args: tuple,
                  kwargs: dict) -> list[TracePair]:
        """One pair per particle and per branch of sequentially enumerated guide sites;
        under validation, TraceEnum's checks and warnings."""
        if isinstance(poutine.unwrap(guide), poutine.messenger.Messenger):
            raise NotImplementedError("TraceEnum_ELBO does not support GuideMessenger guides")
        self._ensure_plate_nesting(model, guide, args, kwargs)
        pairs = list(enum_pairs(model, guide, args, kwargs, int(self.max_plate_nesting),
                                self.num_particles, self.vectorize_particles))
        if is_validation_enabled():
            for pair in pairs:
                check_plate_restriction(pair)
                warn_invalid_enum_dependencies(pair)
                warn_sample_counts(pair)
            self._warn_if_nothing_enumerated(pairs[0])
        return pairs

    def _warn_if_nothing_enumerated(self, pair: TracePair) -> None:
        if not self.strict_enumeration_warning:
            return
        if any(s.infer.get("enumerate") for sites in (pair.model, pair.guide)
               for s in sites.values()):
            return
        warnings.warn("TraceEnum_ELBO found no sample sites configured for enumeration; "
                      'mark sites infer={"enumerate": "parallel"} (or use '
                      "config_enumerate), or use Trace_ELBO", stacklevel=5)

    def _particle_dice(self, pair: TracePair):
        factors = model_factors(pair)
        costs = factors.costs
        if factors.log_factors:
            contracted = contract_tree(factors.log_factors, factors.sum_labels)
            for t, fs in contracted.items():
                for f in fs:
                    scaled = f if is_identically_zero(factors.scale - 1) else \
                        Factor(f.tensor * factors.scale, f.dims)
                    costs.setdefault(t, []).append(scaled)
        for site in pair.guide.values():
            log_q = packed(site, site.log_prob)
            costs.setdefault(ordinal(site), []).append(Factor(-log_q.tensor, log_q.dims))
        log_probs, log_denoms = guide_dice_factors(pair)
        return expected_cost(costs, log_probs, log_denoms)

    def estimate(self, pairs: list[TracePair], surrogate: bool = True) -> Estimate:
        """The DiCE objective, which is its own surrogate (the ELBO value is its
        detached copy); ``0.0`` when nothing is random."""
        total = 0.0
        for pair in pairs:
            elbo = self._particle_dice(pair)
            if not is_identically_zero(elbo):
                total = total + elbo
        if is_identically_zero(total):
            return Estimate(0.0, 0.0)
        total = total / self.num_particles
        return Estimate(total.detach(), total if surrogate else None)

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        """Negative ELBO as a tensor; ``ValueError`` if it cannot be differentiated."""
        loss = super().differentiable_loss(model, guide, *args, **kwargs)
        if not loss.requires_grad:
            raise ValueError(f"the ELBO cannot be differentiated: {loss!r} (no parameter "
                             "reaches it)")
        return loss

    # --- posterior of the model-enumerated sites -------------------------------------
    def _single_pair(self, model, guide, args, kwargs, what: str) -> TracePair:
        if self.num_particles != 1:
            raise NotImplementedError(f"TraceEnum_ELBO.{what}() needs num_particles=1")
        with poutine.block(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Found vars in model but not guide")
            pair = self.particles(model, guide, args, kwargs)[0]
        if any(is_enumerated(s) for s in pair.guide.values()):
            raise NotImplementedError(f"TraceEnum_ELBO.{what}() does not support guide "
                                      "enumeration; enumerate those sites in the model")
        return pair

    def compute_marginals(self, model: Callable, guide: Callable, *args, **kwargs) -> dict:
        """``{site: distribution}``: the exact posterior marginal of each model-enumerated
        site given the data and one draw of the guide's latents (batch shape: the site's
        plates). Marginals are not differentiable."""
        pair = self._single_pair(model, guide, args, kwargs, "compute_marginals")
        factors = model_factors(pair)
        marginals = {}
        for name, site in pair.model.items():
            label = enum_label(site)
            if name in pair.guide or label is None or label not in factors.sum_labels:
                continue
            log_probs = query_marginal(factors.log_factors, factors.sum_labels, label,
                                       ordinal(site))
            marginals[name] = marginal_dist(site, log_probs)
        return marginals

    def sample_posterior(self, model: Callable, guide: Callable, *args, **kwargs):
        """Run ``model`` with the guide's latents and every model-enumerated site drawn
        jointly from its exact posterior; returns the model's return value."""
        pair = self._single_pair(model, guide, args, kwargs, "sample_posterior")
        with BackwardSampleMessenger(pair.model, pair.guide):
            _, result = run_recorded(model, args, kwargs, against=_GuideRun(pair))
        return result
