"""TracePosterior: a bag of execution traces with log weights and chain ids."""

from __future__ import annotations

from collections.abc import Iterator

import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from pyro_svi_ext import validation
from pyro_svi_ext.errors import EmptyPosteriorError
from pyro_svi_ext.infer.marginal import EmpiricalMarginal
from pyro_svi_ext.kernels import waic
from pyro_svi_ext.trace.posterior import observed_log_likelihood, without_observations


class TracePosterior:
    """Collects ``(trace, log_weight[, chain_id])`` from :meth:`_traces` when :meth:`run`
    is called (``pyro.infer.abstract_infer.TracePosterior``'s contract).

    Subclasses implement ``_traces(*args, **kwargs)`` yielding ``pyro.poutine.Trace``
    objects with log weights (float or scalar tensor) and optionally a chain id.
    After :meth:`run`: ``exec_traces``, ``log_weights`` (list of 0-d tensors),
    ``chain_ids``; ``len``, iteration and indexing go over the traces; calling the
    posterior draws one trace by weight (observed sites removed), as Pyro's does.

    :param int num_chains: number of chains the traces come from.
    """

    def __init__(self, num_chains: int = 1):
        self.num_chains = validation.integer(type(self).__name__, "num_chains", num_chains,
                                             minimum=1)
        self._reset()

    def _reset(self) -> None:
        self.exec_traces: list = []
        self.log_weights: list[torch.Tensor] = []
        self.chain_ids: list[int] = []
        self._idx_by_chain: list[list[int]] = [[] for _ in range(self.num_chains)]
        self._categorical = None

    def _traces(self, *args, **kwargs) -> Iterator:
        raise NotImplementedError(f"{type(self).__name__} must implement _traces")

    def run(self, *args, **kwargs) -> TracePosterior:
        """Collect the traces (outer effect handlers blocked); returns ``self``.

        ``ValueError`` if a chain id is outside ``[0, num_chains)``.
        """
        self._reset()
        with poutine.block():
            for index, item in enumerate(self._traces(*args, **kwargs)):
                trace, log_weight, chain_id = item if len(item) == 3 else (*item, 0)
                if not 0 <= chain_id < self.num_chains:
                    raise ValueError(f"chain id {chain_id} outside [0, {self.num_chains})")
                self.exec_traces.append(trace)
                self.log_weights.append(torch.as_tensor(log_weight).detach())
                self.chain_ids.append(chain_id)
                self._idx_by_chain[chain_id].append(index)
        if self.exec_traces:
            self._categorical = dist.Categorical(logits=torch.stack(self.log_weights))
        return self

    def require_traces(self) -> None:
        """:class:`EmptyPosteriorError` when nothing has been collected."""
        if not self.exec_traces:
            raise EmptyPosteriorError(
                f"{type(self).__name__} holds no traces: call .run(*args, **kwargs) first "
                "(and give it num_samples > 0)")

    def __call__(self, *args, **kwargs):
        """One trace drawn in proportion to its weight, with observed sites removed."""
        self.require_traces()
        draw = int(self._categorical.sample())
        chain, position = draw % self.num_chains, draw // self.num_chains
        return without_observations(self.exec_traces[self._idx_by_chain[chain][position]])

    def information_criterion(self, pointwise: bool = False) -> dict:
        """WAIC of the model over the collected traces and its effective number of
        parameters: ``{"waic": ..., "p_waic": ...}`` (0-d tensors, or per data point
        with ``pointwise=True``); ``{}`` before :meth:`run`. The model must have exactly
        one observed site (``ValueError`` otherwise, as in Pyro)."""
        if not self.exec_traces:
            return {}
        log_lik = observed_log_likelihood(self.exec_traces)
        value, p_waic = waic(log_lik, torch.stack(self.log_weights), pointwise)
        return {"waic": value, "p_waic": p_waic}

    def marginal(self, sites: str | list[str] | None = None) -> Marginals:
        """Per-site :class:`~pyro_svi_ext.infer.marginal.EmpiricalMarginal` s."""
        return Marginals(self, sites)

    def __len__(self) -> int:
        return len(self.exec_traces)

    def __iter__(self) -> Iterator:
        return iter(self.exec_traces)

    def __getitem__(self, index: int):
        return self.exec_traces[index]


class Marginals:
    """``empirical``: ``{site: EmpiricalMarginal}`` for each of ``sites`` (default
    ``["_RETURN"]``)."""

    def __init__(self, trace_posterior: TracePosterior, sites=None, validate_args=None):
        if sites is None:
            sites = ["_RETURN"]
        elif isinstance(sites, str):
            sites = [sites]
        self.sites = list(sites)
        self.empirical = {site: EmpiricalMarginal(trace_posterior, site, validate_args)
                          for site in self.sites}

    def support(self) -> dict:
        """``{site: samples}`` of each marginal."""
        return {site: m.enumerate_support() for site, m in self.empirical.items()}
