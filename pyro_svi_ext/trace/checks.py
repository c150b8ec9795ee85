"""Model/guide pairing and shape checks, run when pyro validation is enabled.

Each check names the site it is about.
"""

from __future__ import annotations

import math
import warnings
from itertools import zip_longest

import torch

from pyro_svi_ext.pyro_compat import enumerate_dim
from pyro_svi_ext.trace.sites import Site


def check_pairing(model: dict[str, Site], guide: dict[str, Site], enumerated_ok: bool = False,
                  max_plate_nesting: float = math.inf, model_plates=(), guide_plates=()):
    """Check that model and guide agree on their latent sites and plates (Pyro's checks,
    with Pyro's key phrase first in each message).

    - a guide site the model lacks (and not ``infer={'is_auxiliary': True}``): warning;
    - a model latent the guide lacks (it is then drawn from the prior): warning, unless it
      is enumerated and ``enumerated_ok``; ``NotImplementedError`` if it asks for
      sequential enumeration (model-side sequential enumeration does not exist);
    - an auxiliary guide site that the model also samples: warning;
    - a plate in the guide (``guide_plates``, names) but not the model: warning;
    - event dims or batch shapes (inside ``max_plate_nesting``) that differ between
      model and guide at one site: ``ValueError``;
    - a ``pyro.factor`` in the guide without ``has_rsample``: ``ValueError``.
    """
    latent = {n for n, s in model.items() if not s.is_observed}
    _check_guide_sites(latent, guide)
    missing = latent - set(guide)
    if enumerated_ok:
        missing = {n for n in missing if enumerate_dim(model[n].infer) is None}
    for name in sorted(missing):
        if model[name].infer.get("enumerate") == "sequential":
            raise NotImplementedError(
                f"At site {name!r}, model-side sequential enumeration is not implemented. "
                "Try parallel enumeration or guide-side enumeration.")
    if missing:
        warnings.warn(
            f"Found vars in model but not guide: {sorted(missing)} (drawn from the prior)",
            stacklevel=4,
        )
    for name in sorted(latent & set(guide)):
        _check_same_shape(model[name], guide[name], max_plate_nesting)
    extra_plates = set(guide_plates) - set(model_plates)
    if extra_plates:
        warnings.warn(f"Found plate statements in guide but not model: {sorted(extra_plates)}",
                      stacklevel=4)


def _check_guide_sites(latent: set, guide: dict[str, Site]) -> None:
    """Warnings for guide sites the model lacks (not auxiliary) and auxiliary sites the
    model samples; ``ValueError`` for a ``pyro.factor`` in the guide without
    ``has_rsample``."""
    auxiliary = {n for n, s in guide.items() if s.infer.get("is_auxiliary")}
    extra = set(guide) - latent - auxiliary
    if extra:
        warnings.warn(
            f"Found non-auxiliary vars in guide but not model: {sorted(extra)}; mark them "
            "infer={'is_auxiliary': True} if they are meant to be auxiliary",
            stacklevel=5,
        )
    if auxiliary & latent:
        warnings.warn(f"Found auxiliary vars in the model: {sorted(auxiliary & latent)}",
                      stacklevel=5)
    for name, site in guide.items():
        if (site.infer.get("is_auxiliary") and type(site.fn).__name__ == "Unit"
                and "has_rsample" not in vars(site.fn)):
            raise ValueError(
                f'At guide site pyro.factor("{name}",...), missing specification of '
                "has_rsample: set has_rsample=True if the factor comes from reparameterized "
                "sampling, has_rsample=False otherwise")


def _check_same_shape(model_site: Site, guide_site: Site, max_plate_nesting: float) -> None:
    """``ValueError`` naming the site when model and guide disagree on its event dims, or
    on its shape inside ``max_plate_nesting`` (dims further left may broadcast)."""
    name, m_fn, g_fn = model_site.name, model_site.fn, guide_site.fn
    m_dim = getattr(m_fn, "event_dim", None)
    g_dim = getattr(g_fn, "event_dim", None)
    if m_dim is not None and g_dim is not None and m_dim != g_dim:
        raise ValueError(
            f"Model and guide event_dims disagree at site {name!r}: {m_dim} vs {g_dim}; "
            "use .to_event(n) on one side so they match")
    if not (hasattr(m_fn, "shape") and hasattr(g_fn, "shape")):
        return
    m_shape = m_fn.shape(*model_site.args, **model_site.kwargs)
    g_shape = g_fn.shape(*guide_site.args, **guide_site.kwargs)
    if m_shape == g_shape:
        return
    if len(m_shape) > max_plate_nesting:
        m_shape = m_shape[len(m_shape) - int(max_plate_nesting) - m_fn.event_dim:]
    if len(g_shape) > max_plate_nesting:
        g_shape = g_shape[len(g_shape) - int(max_plate_nesting) - g_fn.event_dim:]
    for m_size, g_size in zip_longest(reversed(m_shape), reversed(g_shape), fillvalue=1):
        if m_size != g_size:
            raise ValueError(
                f"Model and guide shapes disagree at site {name!r}: {tuple(m_shape)} vs "
                f"{tuple(g_shape)}; the guide's distribution must have the model's batch "
                "and event shape (put it in the same plates)")


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
                f'at site "{site.name}" within plate("{frame.name}", dim={frame.dim}), dim '
                "collision: another plate has that dim; give the plates distinct dim= "
                "arguments"
            )
        shape[frame.dim] = frame.size
    return shape


def check_site_shape(site: Site, role: str, max_plate_nesting: float) -> None:
    """Check that the batch shape of ``site.log_prob`` matches its plates.

    Raises ``ValueError`` naming the site (Pyro's key phrase first) on a plate stack
    deeper than ``max_plate_nesting`` ("plate stack overflow"), a batch dim that
    disagrees with the plate at that dim ("invalid log_prob shape"), or an enumerated
    site whose distribution already varies along its own enumeration dim, because an
    upstream variable was given that dim back by a ``pyro.markov`` history too short
    ("Enumeration dim conflict").
    """
    expected = expected_plate_shape(site)
    if len(expected) > max_plate_nesting:
        raise ValueError(
            f'at site "{site.name}", plate stack overflow: {role} site {site.name!r} is in '
            f"{len(expected)} nested plates, more than max_plate_nesting="
            f"{max_plate_nesting}; raise max_plate_nesting to at least {len(expected)}"
        )
    actual = list(site.log_prob.shape) if torch.is_tensor(site.log_prob) else []
    if max_plate_nesting < len(actual):
        actual = actual[len(actual) - int(max_plate_nesting):]
    for got, want in zip_longest(reversed(actual), reversed(expected), fillvalue=1):
        if want != -1 and want != got:
            raise ValueError(
                f'at site "{site.name}", invalid log_prob shape: {role} site '
                f"{site.name!r} has batch shape {tuple(actual)}, its plates imply "
                f"{tuple(expected)} (-1 = any size). Put the site inside the plates that "
                "index its batch dims, or move event dims right with .to_event(n)"
            )
    enum_dim = enumerate_dim(site.infer)
    batch_shape = getattr(site.fn, "batch_shape", ())
    if enum_dim is not None and len(batch_shape) >= -enum_dim and batch_shape[enum_dim] != 1:
        raise ValueError(
            f'Enumeration dim conflict at site "{site.name}": its distribution already '
            f"varies along its own enumeration dim {enum_dim}, which a variable upstream "
            "of it also holds. Try increasing pyro.markov history size")


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
            f"Found sample sites configured for enumeration: {names}, which {estimator} "
            "ignores. If you want to enumerate sites, you need to use TraceEnum_ELBO "
            "instead.",
            stacklevel=4,
        )
