"""Importance sampling with a guide (or the prior) as proposal."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import torch

from pyro_svi_ext import validation
from pyro_svi_ext.infer.trace_posterior import TracePosterior
from pyro_svi_ext.kernels import effective_sample_size, log_mean_exp, normalized_log_weights
from pyro_svi_ext.trace.posterior import prior_proposal, weighted_trace


class Importance(TracePosterior):
    """Posterior by importance sampling (``pyro.infer.Importance``'s contract).

    :param model: the model.
    :param guide: the proposal; ``None`` proposes from the model's prior (observed
        sites stay conditioned on their data).
    :param int num_samples: draws (default 10, as documented).

    Each trace's log weight is ``log p(x, z) - log q(z)``. Weight statistics are computed
    in float64 log space: :meth:`get_log_normalizer` (log marginal-likelihood estimate),
    :meth:`get_normalized_weights`, :meth:`get_ESS`. Each raises
    :class:`~pyro_svi_ext.infer.trace_posterior.EmptyPosteriorError` before ``run``.
    """

    def __init__(self, model: Callable, guide: Callable | None = None,
                 num_samples: int | None = None):
        super().__init__()
        self.model = model
        self.guide = prior_proposal(model) if guide is None else guide
        self.num_samples = 10 if num_samples is None else validation.integer(
            "Importance", "num_samples", num_samples, minimum=1)

    def _traces(self, *args, **kwargs) -> Iterator:
        for _ in range(self.num_samples):
            yield weighted_trace(self.model, self.guide, args, kwargs)

    def _log_weights(self) -> torch.Tensor:
        self.require_traces()
        return torch.stack(self.log_weights).to(torch.float64)

    def get_log_normalizer(self) -> torch.Tensor:
        """``log mean_i w_i``: estimate of the log evidence ``log p(x)`` (0-d, float64)."""
        return log_mean_exp(self._log_weights())

    def get_normalized_weights(self, log_scale: bool = False) -> torch.Tensor:
        """Weights that sum to one, ``(num_samples,)`` float64 (log weights if asked)."""
        log_w = normalized_log_weights(self._log_weights())
        return log_w if log_scale else log_w.exp()

    def get_ESS(self) -> torch.Tensor:  # noqa: N802 (Pyro's name)
        """Kish's effective sample size of the weights (0-d, float64)."""
        return effective_sample_size(self._log_weights())

    def run(self, *args, **kwargs) -> Importance:
        """Draw ``num_samples`` weighted traces; warns if all weights are ``-inf``."""
        super().run(*args, **kwargs)
        if all(torch.isneginf(w).all() for w in self.log_weights):
            warnings.warn("Importance: every draw has zero weight (log weight -inf)",
                          stacklevel=2)
        return self
