"""Per-site terms of the loss, for debugging a model: which sites make the loss what it
is, and along which plate elements."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyro_svi_ext.trace import TracePair
from pyro_svi_ext.trace.provenance import untrack


@dataclass(frozen=True)
class SiteLoss:
    """One sample site's part of the loss, averaged over particles.

    ``model``: its ``log p`` summed over its elements (``None`` for a guide-only,
    auxiliary site); ``guide``: its ``log q`` (``None`` for an observed or
    guide-less site); ``loss``: ``-(model - guide)``, the site's share of the loss (the
    shares sum to the loss). ``elements``: the same share per element of its plates
    (batch-shaped: ``plates[i]`` names dim ``i - len(plates)``; ``None`` where no plate
    is), scale and mask applied.
    """

    model: float | None
    guide: float | None
    loss: float
    elements: torch.Tensor
    plates: tuple


def _plates(site, dims: int) -> tuple:
    names = {f.dim: f.name for f in site.frames if f.dim is not None}
    return tuple(names.get(d) for d in range(-dims, 0))


def site_losses(pairs: list[TracePair], num_particles: int) -> dict[str, SiteLoss]:
    """``{site: SiteLoss}`` over the pairs of one estimate (model order, then the guide's
    own sites)."""
    totals: dict[str, list] = {}
    for pair in pairs:
        for role, sites in (("model", pair.model), ("guide", pair.guide)):
            for name, site in sites.items():
                entry = totals.setdefault(name, [None, None, 0.0, site])
                value = untrack(site.log_prob).detach()
                index = 0 if role == "model" else 1
                share = float(value.sum()) / num_particles
                entry[index] = share if entry[index] is None else entry[index] + share
                signed = value / num_particles * (-1.0 if role == "model" else 1.0)
                entry[2] = entry[2] + signed
    result = {}
    for name, (model, guide, elements, site) in totals.items():
        elements = torch.as_tensor(elements)
        loss = -((model or 0.0) - (guide or 0.0))
        result[name] = SiteLoss(model, guide, loss, elements, _plates(site, elements.dim()))
    return result
