"""RenyiELBO: Renyi alpha-divergence variational bound (IWAE at alpha = 0)."""

from __future__ import annotations

import warnings

import torch

from pyro_svi_ext import validation
from pyro_svi_ext.estimators.base import ELBO, INF
from pyro_svi_ext.kernels import is_identically_zero, renyi_weights, sum_dims, sum_terms
from pyro_svi_ext.protocol import Estimate
from pyro_svi_ext.trace import Site, TracePair


def dependent_plate_dims(sites: list[Site]) -> list[int]:
    """Dims of the vectorized plates that not every site is inside (sorted)."""
    stacks = [set(s.frames) for s in sites]
    if not stacks:
        return []
    every = set().union(*stacks)
    common = every.intersection(*stacks)
    return sorted({f.dim for f in every - common if f.dim is not None})


class RenyiELBO(ELBO):
    """Renyi's alpha-divergence bound ``1/(1-alpha) log mean_i w_i^(1-alpha)``,
    ``w_i = p(x, z_i) / q(z_i)`` over ``num_particles`` draws (``pyro.infer.RenyiELBO``'s
    contract). ``alpha = 0`` is the importance-weighted (IWAE) bound; ``alpha < 1``
    bounds the evidence more tightly than the ELBO.

    Plates that every model site is inside stay separate (one bound per element, then
    summed); the other plate dims are summed within each particle. Non-reparameterized
    guide sites get the score-function term ``alpha/(1-alpha) * w_norm * log q``.

    Errors: ``ValueError`` for ``alpha == 1`` (use :class:`Trace_ELBO`), and for a
    model or guide that subsamples a plate (minibatches are not supported, as documented
    by Pyro); ``NotImplementedError`` for a guide site with both pathwise and
    score-function parts; plus those of :class:`~pyro_svi_ext.estimators.base.ELBO`.
    """

    additive_over_sites = False


    def __init__(
        self,
        alpha: float = 0,
        num_particles: int = 2,
        max_plate_nesting: float = INF,
        max_iarange_nesting: float | None = None,
        vectorize_particles: bool = False,
        strict_enumeration_warning: bool = True,
    ):
        validation.real(type(self).__name__, "alpha", alpha)
        if alpha == 1:
            raise ValueError("RenyiELBO needs alpha != 1; for alpha = 1 use Trace_ELBO, "
                             "whose gradient estimator has lower variance")
        if max_iarange_nesting is not None:
            warnings.warn("max_iarange_nesting is deprecated; use max_plate_nesting",
                          DeprecationWarning, stacklevel=2)
            max_plate_nesting = max_iarange_nesting
        self.alpha = alpha
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles,
                         strict_enumeration_warning=strict_enumeration_warning)

    # --- per particle ---------------------------------------------------------------
    def _check_full_data(self, pairs: list[TracePair]) -> None:
        plates = sorted(set().union(*(p.subsampled_plates for p in pairs)))
        if plates:
            raise ValueError(
                f"RenyiELBO does not support minibatch training, but plate(s) {plates} "
                "subsample the data; run on the full data set or use Trace_ELBO")

    def _particle_terms(self, pair: TracePair, with_surrogate: bool):
        """``(elbo, surrogate)`` of one particle, kept per element of the common plates.

        ``elbo = log p - log q`` is the detached copy of one graph, and with a fully
        reparameterized guide the surrogate is that graph itself (no per-site detach or
        second sum: fewer nodes for every particle's backward)."""
        dims = dependent_plate_dims(list(pair.model.values()))
        log_p = sum_terms([sum_dims(s.log_prob, dims) for s in pair.model.values()])
        path, score, neither = [], [], []
        for site in pair.guide.values():
            term = sum_dims(site.log_prob, dims)
            has_path = not is_identically_zero(site.entropy_term)
            has_score = not is_identically_zero(site.score_function)
            if with_surrogate and has_score and has_path:
                raise NotImplementedError(
                    f"guide site {site.name!r}: RenyiELBO cannot handle a distribution with "
                    "both pathwise and score-function gradient parts")
            (score if has_score else path if has_path else neither).append(term)
        log_w = _difference(log_p, sum_terms(path + score + neither))
        elbo = log_w.detach() if torch.is_tensor(log_w) else log_w
        if not with_surrogate:
            return elbo, 0
        if not score and not neither:
            return elbo, log_w
        surrogate = _difference(log_p, sum_terms(path))
        if score:
            surrogate = surrogate + self.alpha / (1.0 - self.alpha) * sum_terms(score)
        return elbo, surrogate

    def _stacked(self, pairs: list[TracePair], with_surrogate: bool):
        self._check_full_data(pairs)
        terms = [self._particle_terms(p, with_surrogate) for p in pairs]
        if all(is_identically_zero(e) for e, _ in terms):
            return None, None
        if self.vectorize_particles and self.num_particles > 1:
            return terms[0]
        elbos = torch.stack([torch.as_tensor(e) for e, _ in terms])
        if not with_surrogate:
            return elbos, None
        ref = next(s for _, s in terms if torch.is_tensor(s))
        surrogates = torch.stack([s if torch.is_tensor(s) else torch.zeros_like(ref)
                                  for _, s in terms])
        return elbos, surrogates

    def estimate(self, pairs: list[TracePair], surrogate: bool = True) -> Estimate:
        """The bound summed over the common plates' elements, and the surrogate whose
        gradient is the estimator's (weights times per-particle surrogates)."""
        elbos, surrogates = self._stacked(pairs, surrogate)
        if elbos is None:
            return Estimate(0.0, 0.0 if surrogate else None)
        bound, weights = renyi_weights(elbos, self.alpha)
        if not torch.is_tensor(surrogates):
            return Estimate(bound.sum(), None if not surrogate else 0.0)
        weights = weights.to(surrogates.dtype)
        return Estimate(bound.sum(), (weights * surrogates).sum() / self.num_particles)


def _difference(a, b):
    """``a - b`` where either may be the number ``0`` (no sites)."""
    if is_identically_zero(b):
        return a
    return -b if is_identically_zero(a) else a - b
