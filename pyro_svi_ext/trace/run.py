"""Run a guide, then the model against it, and hand back plain site records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch
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
    guide_run, _ = run_recorded(guide, args, kwargs, track_nonreparam=track_nonreparam)
    model_run, ret = run_recorded(model, args, kwargs, against=guide_run,
                                  track_nonreparam=track_nonreparam)
    return finish_pair(guide_run, model_run, ret, max_plate_nesting, estimator)


def finish_pair(guide_run: SiteRecorder, model_run: SiteRecorder, ret: Any,
                max_plate_nesting: float, estimator: str | None = None) -> TracePair:
    """Log-probs, score parts and (under validation) checks of one guide/model run.

    ``estimator``: the name to warn with about enumeration it ignores; ``None`` for an
    enumerating estimator (model latents enumerated instead of guided are then fine).
    """
    validate = is_validation_enabled()
    if validate:
        check_pairing(model_run.sites, guide_run.sites, enumerated_ok=estimator is None)
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
