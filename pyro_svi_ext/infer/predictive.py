"""TracePredictive: posterior predictive traces from a run posterior."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pyro_svi_ext import validation
from pyro_svi_ext.infer.trace_posterior import TracePosterior
from pyro_svi_ext.trace.posterior import model_trace, predictive_trace


class TracePredictive(TracePosterior):
    """Posterior predictive traces (``pyro.infer.TracePredictive``'s contract).

    For each of ``num_samples`` draws: pick a posterior trace in proportion to its
    weight, drop its observed sites, fit its latent values to the model's current plates
    (resampling plate elements when the data size changed), run the model with those
    latents fixed, and record the new trace (``_RETURN`` included). Call
    ``run(*args, **kwargs)`` with the model's arguments, passing ``None`` for data that
    should be predicted rather than observed.

    :param model: the model.
    :param posterior: a :class:`TracePosterior` (e.g. this package's ``SVI`` or
        ``Importance``); run with the same arguments if it holds no traces yet.
    :param int num_samples: predictive draws.
    :param keep_sites: optional site names to take from the posterior (default all).
    """

    def __init__(self, model: Callable, posterior: TracePosterior, num_samples: int,
                 keep_sites=None):
        if not (hasattr(posterior, "exec_traces") and hasattr(posterior, "run")):
            raise validation.ArgumentTypeError(
                "TracePredictive: posterior must be a TracePosterior (e.g. SVI or "
                f"Importance), got {type(posterior).__name__}")
        super().__init__()
        self.model = model
        self.posterior = posterior
        self.num_samples = validation.integer("TracePredictive", "num_samples", num_samples,
                                              minimum=1)
        self.keep_sites = keep_sites

    def _traces(self, *args, **kwargs) -> Iterator:
        if not self.posterior.exec_traces:
            self.posterior.run(*args, **kwargs)
        data_trace = model_trace(self.model, args, kwargs)
        for _ in range(self.num_samples):
            yield predictive_trace(self.model, self.posterior(), data_trace, self.keep_sites,
                                   args, kwargs), 0.0, 0
