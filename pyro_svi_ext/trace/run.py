"""Run a guide, then the model against it, and hand back plain site records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import is_validation_enabled

from pyro_svi_ext.trace.checks import check_pairing, check_site_shape, warn_if_enumerated
from pyro_svi_ext.trace.recorder import SiteRecorder, run_recorded
from pyro_svi_ext.trace.sites import Site, compute_log_probs, compute_score_parts


@dataclass(slots=True)
class TracePair:
    """One particle: the guide's sites, the model's sites replayed against them, and the
    unconstrained params either touched (name -> tensor)."""

    model: dict[str, Site]
    guide: dict[str, Site]
    params: dict[str, torch.Tensor]
    model_return: Any = None
    #: names of plates that drew a minibatch (subsample smaller than the plate)
    subsampled_plates: frozenset = frozenset()


def run_pair(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    max_plate_nesting: float = float("inf"),
    estimator: str = "ELBO",
    track_nonreparam: bool = False,
) -> TracePair:
    """Run ``guide`` then ``model`` (replayed), compute log-probs and score parts.

    Under pyro validation, also checks pairing and each site's batch shape against its
    plates (``max_plate_nesting`` bounds the checked dims). With ``track_nonreparam``,
    log-probs carry the names of the non-reparameterized sites they depend on
    (:mod:`~pyro_svi_ext.trace.provenance`).
    """
    if is_guide_messenger(guide):
        guide_run, model_run = run_guide_messenger(guide, args, kwargs, track_nonreparam)
        return finish_pair(guide_run, model_run, None, max_plate_nesting, estimator)
    guide_run, _ = run_recorded(guide, args, kwargs, track_nonreparam=track_nonreparam)
    model_run, ret = run_recorded(model, args, kwargs, against=guide_run,
                                  track_nonreparam=track_nonreparam)
    return finish_pair(guide_run, model_run, ret, max_plate_nesting, estimator)


def is_guide_messenger(guide: Callable) -> bool:
    """Whether ``guide`` is an effect-based guide (``pyro.poutine.GuideMessenger``, e.g.
    ``AutoNormalMessenger``), which runs the model inside itself."""
    return isinstance(poutine.unwrap(guide), Messenger)


def run_guide_messenger(guide: Callable, args: tuple, kwargs: dict,
                        track_nonreparam: bool = False) -> tuple[SiteRecorder, SiteRecorder]:
    """``(guide run, model run)`` of an effect-based guide, which runs the model once
    with each latent site drawn from its posterior: the guide keeps the latent sites
    (posterior distributions); the model gets every site, latent ones with the prior
    the guide recorded (``infer["prior"]``), observed and ``pyro.factor`` sites as they
    are. Auxiliary guide sites (no prior) stay on the guide's side only."""
    recorder, _ = run_recorded(guide, args, kwargs, track_nonreparam=track_nonreparam)
    guide_run = SiteRecorder()
    model_run = SiteRecorder()
    for name, site in recorder.sites.items():
        prior = site.infer.get("prior")
        if not site.is_observed:
            guide_run.sites[name] = site
        if site.is_observed or prior is not None:
            model_run.sites[name] = site if prior is None else replace(site, fn=prior)
    guide_run.params = recorder.params
    for run in (guide_run, model_run):
        run.subsamples = recorder.subsamples
        run.subsampled_plates = recorder.subsampled_plates
    return guide_run, model_run


def finish_pair(guide_run: SiteRecorder, model_run: SiteRecorder, ret: Any,
                max_plate_nesting: float, estimator: str | None = None) -> TracePair:
    """Log-probs, score parts and (under validation) checks of one guide/model run.

    ``estimator``: the name to warn with about enumeration it ignores; ``None`` for an
    enumerating estimator (model latents enumerated instead of guided are then fine).
    """
    validate = is_validation_enabled()
    if validate:
        check_pairing(model_run.sites, guide_run.sites, estimator is None, max_plate_nesting,
                      model_run.subsamples, guide_run.subsamples)
        if estimator is not None:
            warn_if_enumerated(guide_run.sites, estimator)
    compute_log_probs(model_run.sites, "model")
    compute_score_parts(guide_run.sites, "guide")
    if validate:
        for role, sites in (("model", model_run.sites), ("guide", guide_run.sites)):
            for site in sites.values():
                check_site_shape(site, role, max_plate_nesting)
    params = guide_run.params
    params.update(model_run.params)
    return TracePair(model_run.sites, guide_run.sites, params, ret,
                     frozenset(model_run.subsampled_plates | guide_run.subsampled_plates))


def vectorize_particles(fn: Callable, num_particles: int, dim: int) -> Callable:
    """Wrap ``fn`` in an outermost ``pyro.plate`` of ``num_particles`` at ``dim`` (< 0)."""
    return pyro.plate("num_particles_vectorized", num_particles, dim=dim)(fn)


def guess_plate_nesting(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
    """The deepest vectorized plate dim of guide and model, run once (blocked from outer
    handlers, without enumeration); under validation, their sites' batch shapes are
    checked against their plates first (``ValueError`` naming the site)."""
    with poutine.block():
        guide_run, _ = run_recorded(guide, args, kwargs)
        model_run, _ = run_recorded(model, args, kwargs, against=guide_run)
    if is_validation_enabled():
        compute_log_probs(model_run.sites, "model")
        compute_log_probs(guide_run.sites, "guide")
        for role, run in (("model", model_run), ("guide", guide_run)):
            for site in run.sites.values():
                check_site_shape(site, role, float("inf"))
    dims = [-f.dim for run in (guide_run, model_run) for s in run.sites.values()
            for f in s.frames if f.dim is not None]
    return max(dims, default=0)
