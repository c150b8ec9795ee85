"""Full ``pyro.poutine.Trace`` objects for posteriors (what ``TracePosterior`` stores)."""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch

from pyro_svi_ext.pyro_compat import is_subsample


def _guided_traces(model: Callable, guide: Callable, args: tuple, kwargs: dict):
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        *args, **kwargs)
    return model_trace, guide_trace


def posterior_trace(model: Callable, guide: Callable, args: tuple, kwargs: dict):
    """A model trace with latent values drawn from ``guide`` (a ``pyro.poutine.Trace``,
    so pyro's own utilities can read it)."""
    return _guided_traces(model, guide, args, kwargs)[0]


def weighted_trace(model: Callable, guide: Callable, args: tuple, kwargs: dict):
    """``(model trace, log p - log q)`` for one draw from ``guide`` (a scalar tensor)."""
    model_trace, guide_trace = _guided_traces(model, guide, args, kwargs)
    return model_trace, model_trace.log_prob_sum() - guide_trace.log_prob_sum()


def prior_proposal(model: Callable) -> Callable:
    """``model`` with its observe statements hidden: proposes latents from the prior."""
    return poutine.block(model, hide_types=["observe"])


def without_observations(trace):
    """A copy of ``trace`` without its observed sites."""
    trace = trace.copy()
    for name in trace.observation_nodes:
        trace.remove_node(name)
    return trace


def site_value(trace, name: str):
    """The value of site ``name`` in ``trace``; ``KeyError`` naming the site if absent."""
    if name not in trace.nodes:
        raise KeyError(f"site {name!r} is not in the posterior's traces "
                       f"(sites: {[n for n in trace.nodes if not n.startswith('_I')]})")
    return trace.nodes[name]["value"]


def observed_log_likelihood(traces: list) -> torch.Tensor:
    """``(S, *batch)`` log-likelihood of the one observed site of each of ``S`` traces.

    ``ValueError`` when a trace has more than one observed site, or the observed site's
    name differs between traces (the information criterion needs one).
    """
    name, values = None, []
    for trace in traces:
        observed = trace.observation_nodes
        if len(observed) != 1:
            raise ValueError("the information criterion needs a model with exactly one "
                             f"observed site; found {observed}")
        if name is not None and observed[0] != name:
            raise ValueError(f"the observed site changed between traces: {name!r} then "
                             f"{observed[0]!r}")
        name = observed[0]
        site = trace.nodes[name]
        values.append(site["fn"].log_prob(site["value"]))
    return torch.stack(values)


def fit_to_data(trace, data_trace) -> None:
    """Make a posterior trace's latent sites fit a fresh run of the model (``data_trace``):
    take its distributions, plate frames and subsample indices, and resample each plate's
    elements (uniformly, with replacement) to the plate's new size, in place."""
    chosen: dict[str, torch.Tensor] = {}
    for name, site in trace.iter_stochastic_nodes():
        fresh = data_trace.nodes[name]
        if is_subsample(site["fn"]):
            site["value"] = fresh["value"]
        old_frames, site["cond_indep_stack"] = site["cond_indep_stack"], fresh["cond_indep_stack"]
        site["fn"] = fresh["fn"]
        for old, new in zip(old_frames, site["cond_indep_stack"], strict=True):
            draw = torch.randint(0, old.size, (new.size,), device=site["value"].device)
            indices = chosen.setdefault(new.name, draw)
            batch_dim = new.dim - site["fn"].event_dim
            site["value"] = site["value"].index_select(batch_dim, indices)


def predictive_trace(model: Callable, posterior_trace, data_trace, keep_sites,
                     args: tuple, kwargs: dict):
    """Run ``model`` with its latent sites fixed to those of ``posterior_trace`` (restricted
    to ``keep_sites`` when given) and everything else drawn afresh; returns the trace."""
    trace = posterior_trace.copy()
    if keep_sites is not None:
        for name in list(trace.nodes):
            if name not in keep_sites:
                trace.remove_node(name)
    fit_to_data(trace, data_trace)
    return poutine.trace(poutine.replay(model, trace)).get_trace(*args, **kwargs)


def model_trace(model: Callable, args: tuple, kwargs: dict):
    """A trace of ``model`` run forward."""
    return poutine.trace(model).get_trace(*args, **kwargs)
