"""Model/guide pairing and shape checks, run when pyro validation is enabled.

Each check names the site it is about.
"""

from __future__ import annotations

import math
import warnings
from itertools import zip_longest

import torch

from pyro_svi_ext.trace.sites import Site


def check_pairing(model: dict[str, Site], guide: dict[str, Site], enumerated_ok: bool = False):
    """Check that model and guide agree on their latent sites.

    - a guide site the model lacks (and not ``infer={'is_auxiliary': True}``): warning;
    - a model latent the guide lacks (it is then drawn from the prior): warning, unless it
      is enumerated and ``enumerated_ok``;
    - an auxiliary guide site that the model also samples: warning;
    - event dims that differ between model and guide at one site: ``ValueError``.
    """
    latent = {n for n, s in model.items() if not s.is_observed}
    auxiliary = {n for n, s in guide.items() if s.infer.get("is_auxiliary")}
    extra = set(guide) - latent - auxiliary
    if extra:
        warnings.warn(
            f"guide sites not in the model: {sorted(extra)}; mark them "
            "infer={'is_auxiliary': True} if they are meant to be auxiliary",
            stacklevel=4,
        )
    if auxiliary & latent:
        warnings.warn(f"auxiliary guide sites also in the model: {sorted(auxiliary & latent)}",
                      stacklevel=4)
    missing = latent - set(guide)
    if enumerated_ok:
        missing = {n for n in missing if model[n].infer.get("_enumerate_dim") is None}
    if missing:
        warnings.warn(
            f"model latent sites not in the guide (drawn from the prior): {sorted(missing)}",
            stacklevel=4,
        )
    for name in latent & set(guide):
        m_dim = getattr(model[name].fn, "event_dim", None)
        g_dim = getattr(guide[name].fn, "event_dim", None)
        if m_dim is not None and g_dim is not None and m_dim != g_dim:
            raise ValueError(
                f"site {name!r}: model and guide disagree on event_dim ({m_dim} vs {g_dim}); "
                "use .to_event(n) on one side so they match"
            )


def expected_plate_shape(site: Site) -> list[int]:
    """Batch shape the site's plates imply: plate sizes at their dims, -1 elsewhere."""
    shape: list[int] = []
    for frame in site.frames:
        if frame.dim is None:
            continue
        if len(shape) < -frame.dim:
            shape = [-1] * (-frame.dim - len(shape)) + shape
        if shape[frame.dim] != -1:
            raise ValueError(
                f"site {site.name!r}: plate {frame.name!r} collides with another plate at "
                f"dim={frame.dim}; give the plates distinct dim= arguments"
            )
        shape[frame.dim] = frame.size
    return shape


def check_site_shape(site: Site, role: str, max_plate_nesting: float) -> None:
    """Check that the batch shape of ``site.log_prob`` matches its plates.

    Raises ``ValueError`` naming the site on a plate stack deeper than
    ``max_plate_nesting`` or a batch dim that disagrees with the plate at that dim.
    """
    expected = expected_plate_shape(site)
    if len(expected) > max_plate_nesting:
        raise ValueError(
            f"{role} site {site.name!r}: {len(expected)} nested plates exceed "
            f"max_plate_nesting={max_plate_nesting}; raise max_plate_nesting to at least "
            f"{len(expected)}"
        )
    actual = list(site.log_prob.shape) if torch.is_tensor(site.log_prob) else []
    if max_plate_nesting < len(actual):
        actual = actual[len(actual) - int(max_plate_nesting):]
    for got, want in zip_longest(reversed(actual), reversed(expected), fillvalue=1):
        if want != -1 and want != got:
            raise ValueError(
                f"{role} site {site.name!r}: batch shape {tuple(actual)} does not match its "
                f"plates {tuple(expected)} (-1 = any size). Put the site inside the plates "
                "that index its batch dims, or move event dims right with .to_event(n)"
            )


def nonfinite_sites(model: dict[str, Site], guide: dict[str, Site]) -> list[str]:
    """Names (``"model:x"``/``"guide:z"``) of the sites whose log-prob sum is not finite.

    Slow path only: called after a non-finite loss has been seen.
    """
    bad = []
    for role, sites in (("model", model), ("guide", guide)):
        for site in sites.values():
            if site.log_prob_sum is None:
                continue
            total = float(site.log_prob_sum.detach())
            if not math.isfinite(total):
                bad.append(f"{role}:{site.name} (log_prob sum {total})")
    return bad


def warn_if_enumerated(guide: dict[str, Site], estimator: str) -> None:
    """Warn when guide sites ask for enumeration that ``estimator`` will not perform."""
    names = [n for n, s in guide.items() if s.infer.get("enumerate")]
    if names:
        warnings.warn(
            f"guide sites {names} are configured for enumeration, which {estimator} "
            "ignores; use TraceEnum_ELBO to enumerate them",
            stacklevel=4,
        )
