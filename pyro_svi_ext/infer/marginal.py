"""EmpiricalMarginal: the weighted empirical distribution of sites over a posterior."""

from __future__ import annotations

import pyro.distributions as dist
import torch

from pyro_svi_ext.errors import EmptyPosteriorError
from pyro_svi_ext.trace.posterior import site_value


class EmpiricalMarginal(dist.Empirical):
    """Marginal over one or more sites of a :class:`TracePosterior`'s traces, weighted by
    their log weights (``pyro.infer.EmpiricalMarginal``'s contract); a
    ``pyro.distributions.Empirical``.

    :param trace_posterior: a run posterior (this package's or Pyro's).
    :param sites: a site name or list of names; ``None`` means the return value
        (``"_RETURN"``). Several sites must share one shape; their values are stacked
        along a new leftmost event dim.
    :param validate_args: passed to the distribution.

    Errors: :class:`~pyro_svi_ext.infer.trace_posterior.EmptyPosteriorError` (a
    ``ValueError``) for a posterior with no traces; ``ValueError`` naming the sites and
    shapes when listed sites differ in shape; ``KeyError`` naming a site absent from
    the traces. With several chains the marginal has batch shape ``(num_chains,)``.
    """

    def __init__(self, trace_posterior, sites=None, validate_args=None):
        if not hasattr(trace_posterior, "exec_traces"):
            raise TypeError("EmpiricalMarginal needs a TracePosterior, got "
                            f"{type(trace_posterior).__name__}")
        if not trace_posterior.exec_traces:
            raise EmptyPosteriorError(
                f"{type(trace_posterior).__name__} holds no traces: call .run(*args, "
                "**kwargs) first (and give it num_samples > 0)")
        sites = "_RETURN" if sites is None else sites
        samples, log_weights = self._collect(trace_posterior, sites)
        super().__init__(samples, log_weights, validate_args=validate_args)

    @staticmethod
    def _value(trace, sites):
        if isinstance(sites, str):
            value = site_value(trace, sites)
            if value is None:
                raise ValueError(f"site {sites!r} has no value (a model that returns "
                                 "nothing has _RETURN None); name the sites to read")
            return torch.as_tensor(value)
        values = [torch.as_tensor(site_value(trace, s)) for s in sites]
        shapes = {s: tuple(v.shape) for s, v in zip(sites, values, strict=True)}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"EmpiricalMarginal sites must share one shape, got {shapes}")
        return torch.stack(values, 0)

    @classmethod
    def _collect(cls, posterior, sites):
        by_chain: dict[int, tuple[list, list]] = {}
        for trace, log_weight, chain in zip(posterior.exec_traces, posterior.log_weights,
                                            posterior.chain_ids, strict=True):
            values, weights = by_chain.setdefault(chain, ([], []))
            values.append(cls._value(trace, sites))
            weights.append(torch.as_tensor(log_weight))
        chains = []
        for chain in sorted(by_chain):
            values, weights = by_chain[chain]
            samples = torch.stack(values, 0)
            dtype = samples.dtype if samples.dtype.is_floating_point else torch.float32
            chains.append((samples, torch.stack(weights).to(dtype=dtype,
                                                            device=samples.device)))
        if len(chains) == 1:
            return chains[0]
        return torch.stack([s for s, _ in chains]), torch.stack([w for _, w in chains])
