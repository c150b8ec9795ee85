"""Log-space weight arithmetic for importance sampling and Renyi bounds.

Shapes: ``log_w`` has the particle/sample dim at ``dim`` (default 0); results drop it
unless ``keepdim``. Everything stays in log space, so weights whose ratios exceed the
float range (log weights from -1e4 to 0, or spread over 1e300) stay finite.
"""

from __future__ import annotations

import math

import torch


def log_mean_exp(log_w: torch.Tensor, dim: int = 0, keepdim: bool = False) -> torch.Tensor:
    """``log(mean(exp(log_w)))`` along ``dim``."""
    return torch.logsumexp(log_w, dim=dim, keepdim=keepdim) - math.log(log_w.shape[dim])


def normalized_log_weights(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log_w - logsumexp(log_w)``: log of weights that sum to one along ``dim``."""
    return log_w - torch.logsumexp(log_w, dim=dim, keepdim=True)


def effective_sample_size(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Kish's ESS ``1 / sum(w_norm^2)`` from unnormalized log weights."""
    return torch.exp(-torch.logsumexp(2 * normalized_log_weights(log_w, dim), dim=dim))


def renyi_weights(elbo_particles: torch.Tensor, alpha: float):
    """For Renyi's bound with order ``alpha`` (!= 1) over particles at dim 0.

    ``elbo_particles``: ``(P, ...)`` per-particle ``log p - log q``. Returns
    ``(bound, normalized_weights)`` where ``bound`` (shape ``(1, ...)``) is
    ``log mean exp((1-alpha) * elbo) / (1-alpha)`` and ``normalized_weights``
    (shape ``(P, ...)``) are ``exp((1-alpha) * elbo - log mean exp(...))``.
    """
    log_w = (1.0 - alpha) * elbo_particles
    log_mean = log_mean_exp(log_w, dim=0, keepdim=True)
    return log_mean / (1.0 - alpha), (log_w - log_mean).exp()


def waic(log_lik: torch.Tensor, log_w: torch.Tensor, pointwise: bool = False):
    """Widely applicable information criterion and its effective number of parameters.

    ``log_lik``: ``(S, ...)`` log-likelihood of the data under each of ``S`` posterior
    draws; ``log_w``: ``(S,)`` their log weights. Returns ``(waic, p_waic)``, each of shape
    ``log_lik.shape[1:]`` when ``pointwise`` else summed to 0-d. ``waic = -2 (lpd -
    p_waic)``, ``lpd`` the log of the weighted mean likelihood and ``p_waic`` its weighted
    variance (frequency-weight correction ``S / (S - 1)``).
    """
    shape = (-1,) + (1,) * (log_lik.dim() - 1)
    log_w = log_w.to(log_lik.dtype).reshape(shape)
    lpd = torch.logsumexp(log_lik + log_w, dim=0) - torch.logsumexp(log_w, dim=0)
    weights = normalized_log_weights(log_w).exp()
    mean = (weights * log_lik).sum(0, keepdim=True)
    num = log_lik.shape[0]
    p_waic = (weights * (log_lik - mean).pow(2)).sum(0) * (num / (num - 1.0))
    value = -2.0 * (lpd - p_waic)
    return (value, p_waic) if pointwise else (value.sum(), p_waic.sum())
