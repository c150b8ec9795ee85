"""BackwardSampleMessenger: draw model-enumerated sites from their exact joint posterior.

While the model runs, each enumerated site is drawn from its marginal given the sites
already drawn (computed with the package's sum-product kernel), then fixed in every
factor: forward filtering, backward sampling.
"""

from __future__ import annotations

import pyro.distributions as dist
from pyro.poutine.messenger import Messenger

from pyro_svi_ext.kernels.sumproduct import Factor, align, clamp, query_marginal
from pyro_svi_ext.trace.enum import enum_label, ordinal, plate_label
from pyro_svi_ext.trace.factors import model_factors
from pyro_svi_ext.trace.pyro_traces import sites_of
from pyro_svi_ext.trace.run import TracePair
from pyro_svi_ext.trace.sites import Site


def marginal_dist(site: Site, log_probs: Factor):
    """A distribution of the site's family (``Categorical``, ``Bernoulli``,
    ``OneHotCategorical``) whose batch shape follows the site's plates."""
    plates = {plate_label(f.name): f.dim for f in site.frames if f.dim is not None}
    present = {lab: pos for lab, pos in plates.items() if lab in log_probs.dims}
    rank = max((-pos for pos in present.values()), default=0)
    order = [None] * rank
    for lab, pos in present.items():
        order[rank + pos] = lab
    label = log_probs.dims[0]
    dims = (*(d if d is not None else ("unit", i) for i, d in enumerate(order)), label)
    logits = align(Factor(log_probs.tensor, log_probs.dims), dims)
    while logits.dim() > 1 and logits.shape[0] == 1:
        logits = logits.squeeze(0)
    fn = site.fn
    if isinstance(fn, dist.Bernoulli):
        return dist.Bernoulli(logits=logits[..., 1] - logits[..., 0])
    if isinstance(fn, (dist.Categorical, dist.OneHotCategorical)):
        return type(fn)(logits=logits)
    raise NotImplementedError(f"site {site.name!r}: posterior marginals are supported for "
                              f"Categorical, OneHotCategorical and Bernoulli, not "
                              f"{type(fn).__name__}")


class BackwardSampleMessenger(Messenger):
    """Samples model-enumerated sites from their joint posterior (forward filtering,
    backward sampling) while the model runs (``pyro.infer.BackwardSampleMessenger``'s
    role).

    :param enum_trace: the model's sites of an enumerated run (``TracePair.model``, or a
        ``pyro.poutine.Trace`` of a model run under enumeration, as Pyro takes it), or
        a :class:`~pyro_svi_ext.trace.TracePair` (then ``guide_trace`` may be omitted).
    :param guide_trace: the guide's sites of the same run (``TracePair.guide`` or a
        ``pyro.poutine.Trace``).

    ``RuntimeError`` on exit if some enumerated site was never reached.
    """

    def __init__(self, enum_trace, guide_trace=None):
        if isinstance(enum_trace, TracePair):
            enum_trace, guide_trace = enum_trace.model, enum_trace.guide
        if hasattr(enum_trace, "nodes"):  # Pyro's traces
            enum_trace = sites_of(enum_trace, "model")
        if hasattr(guide_trace, "nodes"):
            guide_trace = sites_of(guide_trace, "guide")
        super().__init__()
        self.enum_sites = enum_trace
        self.guide_sites = guide_trace or {}
        factors = model_factors(TracePair(enum_trace, self.guide_sites, {}))
        self.log_factors = {t: list(fs) for t, fs in factors.log_factors.items()}
        self.sum_labels = set(factors.sum_labels)

    def _site(self, msg: dict) -> Site | None:
        site = self.enum_sites.get(msg["name"])
        if site is None or msg["name"] in self.guide_sites:
            return None
        label = enum_label(site)
        return site if label in self.sum_labels else None

    def _pyro_sample(self, msg: dict) -> None:
        site = self._site(msg)
        if site is None:
            return
        log_probs = query_marginal(self.log_factors, self.sum_labels, enum_label(site),
                                   ordinal(site))
        msg["fn"] = marginal_dist(site, log_probs)

    def _pyro_post_sample(self, msg: dict) -> None:
        site = self._site(msg)
        if site is None:
            return
        label = enum_label(site)
        value = msg["value"]
        if isinstance(site.fn, dist.OneHotCategorical):
            value = value.argmax(-1)
        plates = {f.dim: plate_label(f.name) for f in site.frames if f.dim is not None}
        index = value.long()
        dims = tuple(plates[pos] for pos in range(-index.dim(), 0)
                     if index.shape[pos] > 1)
        index = index.reshape([s for s in index.shape if s > 1]) if index.dim() else index
        idx = Factor(index, dims)
        self.log_factors = {t: [clamp(f, label, idx) for f in fs]
                            for t, fs in self.log_factors.items()}
        self.sum_labels.discard(label)

    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is None and self.sum_labels:
            names = [n for n, s in self.enum_sites.items() if enum_label(s) in self.sum_labels]
            super().__exit__(exc_type, exc_value, traceback)
            raise RuntimeError(f"BackwardSampleMessenger: enumerated sites {names} were "
                               "never sampled; run the same model inside it")
        return super().__exit__(exc_type, exc_value, traceback)
