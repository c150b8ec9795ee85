"""ArviZ export (needs arviz: ``pip install 'pyro-svi-ext[arviz]'``).

:func:`to_inference_data` turns draws from a run posterior (``Importance``,
``TracePosterior``, ``SVI.run``) or from a guide into an ``arviz.InferenceData`` with the
groups ``posterior``, ``posterior_predictive``, ``observed_data`` and ``log_likelihood``,
its dims named after the model's plates.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch

from pyro_svi_ext.infer.trace_posterior import TracePosterior
from pyro_svi_ext.pyro_compat import is_subsample


def _draw_traces(model: Callable, source, num_samples: int, args: tuple, kwargs: dict):
    """``num_samples`` model traces whose latents come from ``source``: a run posterior
    (traces drawn in proportion to their weights) or a guide (run each time)."""
    if isinstance(source, TracePosterior) or hasattr(source, "exec_traces"):
        latents = [source() for _ in range(num_samples)]
        return [poutine.trace(poutine.replay(model, trace=t)).get_trace(*args, **kwargs)
                for t in latents]
    traces = []
    for _ in range(num_samples):
        guide_trace = poutine.trace(source).get_trace(*args, **kwargs)
        traces.append(poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs))
    return traces


def _dims(name: str, site: dict, value: torch.Tensor) -> list[str]:
    """Dim names of one draw of a site's value: its plates' names where a plate sits,
    ``<site>_dim_<i>`` elsewhere (event dims, dims no plate claims)."""
    plates = {f.dim: f.name for f in site["cond_indep_stack"] if f.dim is not None}
    event_dim = getattr(site["fn"], "event_dim", 0)
    batch = value.dim() - event_dim
    names = [plates.get(i - batch, f"{name}_dim_{k}") for k, i in enumerate(range(batch))]
    names += [f"{name}_dim_{batch + k}" for k in range(event_dim)]
    return names


def _sample_sites(trace):
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not is_subsample(site["fn"]):
            yield name, site


def to_inference_data(model: Callable, source, *args, num_samples: int = 1000,
                      predictive: bool = True, **kwargs):
    """An ``arviz.InferenceData`` of ``num_samples`` posterior draws (one chain).

    :param model: the model, run with ``(*args, **kwargs)`` (the observed data included).
    :param source: a run posterior or a guide.
    :param predictive: also draw ``posterior_predictive`` (the observed sites drawn
        afresh given each posterior draw).

    Groups: ``posterior`` (latent sites), ``log_likelihood`` (each observed site's
    log-probability per draw and element), ``observed_data``, ``posterior_predictive``.
    ``ImportError`` without arviz; ``ValueError`` for a model without observed sites.
    """
    try:
        import arviz as az
    except ImportError as err:  # the optional extra
        raise ImportError("ArviZ export needs arviz: pip install "
                          "'pyro-svi-ext[arviz]'") from err
    traces = _draw_traces(model, source, num_samples, args, kwargs)
    posterior, log_lik, observed, dims = {}, {}, {}, {}
    first = traces[0]
    for name, site in _sample_sites(first):
        value = site["value"].detach()
        dims[name] = _dims(name, site, value)
        if site["is_observed"]:
            observed[name] = value.cpu().numpy()
            log_lik[name] = torch.stack([t.nodes[name]["fn"].log_prob(t.nodes[name]["value"])
                                         .detach() for t in traces]).unsqueeze(0)
        else:
            posterior[name] = torch.stack([t.nodes[name]["value"].detach()
                                           for t in traces]).unsqueeze(0)
    if not observed:
        raise ValueError("to_inference_data needs a model with observed sites (pass the "
                         "data the model conditions on)")
    groups = {"posterior": {k: v.cpu().numpy() for k, v in posterior.items()},
              "log_likelihood": {k: v.cpu().numpy() for k, v in log_lik.items()},
              "observed_data": observed}
    if predictive:
        fresh = [poutine.trace(poutine.uncondition(poutine.replay(model, trace=t)))
                 .get_trace(*args, **kwargs) for t in traces]
        groups["posterior_predictive"] = {
            k: torch.stack([t.nodes[k]["value"].detach() for t in fresh]).unsqueeze(0)
            .cpu().numpy() for k in observed}
    return az.from_dict(**groups, dims=dims)
