"""Pyro's own ``poutine.Trace`` objects for code written against Pyro's ELBO hooks.

Subclasses of Pyro's estimators in the wild override ``_get_trace`` or
``_differentiable_loss_particle(model_trace, guide_trace)`` and read trace nodes
(``site["log_prob_sum"]``, ``site["score_parts"]``). This module builds those traces
(guide, then the model replayed against it; log-probs and score parts computed, checks
run under validation) and turns a pair of traces back into the :class:`TracePair` the
estimators compute with.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
from pyro.poutine.util import is_validation_enabled, prune_subsample_sites

from pyro_svi_ext.pyro_compat import is_subsample
from pyro_svi_ext.trace.checks import check_pairing, check_site_shape, warn_if_enumerated
from pyro_svi_ext.trace.run import TracePair, is_guide_messenger
from pyro_svi_ext.trace.sites import (
    Site,
    compute_log_probs,
    compute_score_parts,
    site_from_message,
)


def _sample_sites(trace) -> dict[str, Site]:
    return {name: site_from_message(node) for name, node in trace.nodes.items()
            if node["type"] == "sample"}


def _plates(trace) -> set[str]:
    return {name for name, node in trace.nodes.items()
            if node["type"] == "sample" and is_subsample(node["fn"])}


def importance_traces(model: Callable, guide: Callable, args: tuple, kwargs: dict,
                      max_plate_nesting: float, estimator: str):
    """``(model_trace, guide_trace)``: Pyro traces of one particle, subsample sites
    pruned, ``log_prob`` (model) and ``score_parts`` (guide) computed. Under validation,
    the checks of :mod:`~pyro_svi_ext.trace.checks` (warning about enumeration that
    ``estimator`` ignores)."""
    if is_guide_messenger(guide):
        guide(*args, **kwargs)
        model_trace, guide_trace = poutine.unwrap(guide).get_traces()
    else:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs)
    validate = is_validation_enabled()
    if validate:
        check_pairing(_sample_sites(prune_subsample_sites(model_trace)),
                      _sample_sites(prune_subsample_sites(guide_trace)), False,
                      max_plate_nesting, _plates(model_trace), _plates(guide_trace))
        warn_if_enumerated(_sample_sites(guide_trace), estimator)
    model_trace = prune_subsample_sites(model_trace)
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    if validate:
        for role, trace in (("model", model_trace), ("guide", guide_trace)):
            for site in pair_sites(trace, role).values():
                check_site_shape(site, role, max_plate_nesting)
    return model_trace, guide_trace


def pair_sites(trace, role: str) -> dict[str, Site]:
    """The sample sites of a Pyro trace as :class:`Site` records carrying the trace's
    own log-prob terms (computed on the trace first if missing)."""
    if role == "model":
        trace.compute_log_prob()
    else:
        trace.compute_score_parts()
    sites = _sample_sites(prune_subsample_sites(trace))
    for name, site in sites.items():
        node = trace.nodes[name]
        site.log_prob = node["log_prob"]
        site.log_prob_sum = node["log_prob_sum"]
        if role == "guide":
            _, site.score_function, site.entropy_term = node["score_parts"]
    return sites


def sites_of(trace, role: str) -> dict[str, Site]:
    """The sample sites of a Pyro trace as :class:`Site` records with log-prob terms
    computed here (as :func:`~pyro_svi_ext.trace.run.run_pair` computes them)."""
    sites = _sample_sites(prune_subsample_sites(trace))
    (compute_log_probs if role == "model" else compute_score_parts)(sites, role)
    return sites


def pair_from_traces(model_trace, guide_trace) -> TracePair:
    """A :class:`TracePair` over the sites (and params) of two Pyro traces."""
    params = {}
    for trace in (guide_trace, model_trace):
        for name, node in trace.nodes.items():
            if node["type"] == "param":
                value = node["value"]
                unconstrained = getattr(value, "unconstrained", None)
                params[name] = unconstrained() if unconstrained is not None else value
    return TracePair(pair_sites(model_trace, "model"), pair_sites(guide_trace, "guide"),
                     params)
