"""Plain records of sample sites, built from pyro messages, with their log-prob terms.

A :class:`Site` is what the estimators see; they never touch pyro's message dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pyro_svi_ext.kernels import is_identically_zero, scale_and_mask
from pyro_svi_ext.trace.devices import is_device_mismatch, mixed_devices_at_site


@dataclass(slots=True, eq=False)
class Site:
    """One sample site of a model or guide run.

    ``log_prob``: batch-shaped, scaled and masked (filled by :func:`compute_log_probs`).
    ``score_function``: unscaled score term of a non-reparameterized guide site, else ``0``.
    ``entropy_term``: scaled, masked term that carries pathwise gradients, else ``0``.
    ``frames``: every plate frame of the site (vectorized and sequential), outermost first.
    """

    name: str
    fn: Any
    value: torch.Tensor
    is_observed: bool
    frames: tuple
    infer: dict
    scale: Any = 1.0
    mask: Any = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    log_prob: Any = None
    log_prob_sum: Any = None
    #: log-prob masked but not scaled (what enumeration contracts before scaling)
    masked_log_prob: Any = None
    #: log-prob neither masked nor scaled
    unscaled: Any = None
    score_function: Any = 0
    entropy_term: Any = 0

    @property
    def plate_frames(self) -> frozenset:
        """The vectorized plate frames (those that own a tensor dim)."""
        return frozenset(f for f in self.frames if f.dim is not None)

    @property
    def entropy_sum(self) -> Any:
        """``entropy_term.sum()`` (a scalar), or ``log_prob_sum`` itself when the two terms
        are one tensor (a reparameterized guide site)."""
        if self.entropy_term is self.log_prob and self.log_prob_sum is not None:
            return self.log_prob_sum
        return self.entropy_term.sum()

    @property
    def reparameterized(self) -> bool:
        """False when the site needs a score-function (REINFORCE) term."""
        return is_identically_zero(self.score_function)


def site_from_message(msg: dict) -> Site:
    """Copy what the estimators need out of a pyro sample message."""
    return Site(
        name=msg["name"],
        fn=msg["fn"],
        value=msg["value"],
        is_observed=bool(msg["is_observed"]),
        frames=tuple(msg["cond_indep_stack"]),
        infer=msg["infer"] if msg["infer"] is not None else {},
        scale=msg["scale"],
        mask=msg["mask"],
        args=msg["args"],
        kwargs=msg["kwargs"],
    )


def _raise_for_site(site: Site, role: str, err: Exception) -> None:
    what = "log_prob" if role == "model" else "score_parts"
    if is_device_mismatch(err):
        raise mixed_devices_at_site(err, what, site.name, role, site.value, site.fn) from err
    raise type(err)(
        f"Error while computing {what} at site {site.name!r} ({role}): {err}"
    ) from err


def compute_log_probs(sites: dict[str, Site], role: str = "model") -> None:
    """Fill ``log_prob`` and ``log_prob_sum`` of every site (model side).

    Errors name the site: ``ValueError``/``RuntimeError`` raised by the distribution are
    re-raised with Pyro's ``"Error while computing log_prob at site '<name>'"`` in front.
    """
    for site in sites.values():
        if site.log_prob is not None:
            continue
        try:
            log_p = site.fn.log_prob(site.value, *site.args, **site.kwargs)
        except (ValueError, RuntimeError) as err:
            _raise_for_site(site, role, err)
        site.masked_log_prob = scale_and_mask(log_p, 1.0, site.mask)
        site.log_prob = scale_and_mask(site.masked_log_prob, site.scale)
        site.log_prob_sum = site.log_prob.sum()
        site.unscaled = log_p


def compute_score_parts(sites: dict[str, Site], role: str = "guide") -> None:
    """Fill ``log_prob``, ``score_function`` and ``entropy_term`` (guide side).

    Reparameterized sites carry their pathwise term in ``entropy_term``; the others
    carry an unscaled ``score_function`` (the scale is applied to the cost instead).
    """
    for site in sites.values():
        if site.log_prob is not None:
            continue
        fn = site.fn
        try:
            if hasattr(fn, "score_parts"):
                log_p, score, entropy = fn.score_parts(site.value, *site.args, **site.kwargs)
            else:
                log_p = fn.log_prob(site.value, *site.args, **site.kwargs)
                score, entropy = (0, log_p) if fn.has_rsample else (log_p, 0)
        except (ValueError, RuntimeError) as err:
            _raise_for_site(site, role, err)
        site.log_prob = scale_and_mask(log_p, site.scale, site.mask)
        site.log_prob_sum = site.log_prob.sum()
        # a reparameterized site's entropy term is its log-prob: share the tensor (and
        # its sum, see entropy_sum) instead of scaling and summing it a second time
        site.entropy_term = (site.log_prob if entropy is log_p
                             else scale_and_mask(entropy, site.scale, site.mask))
        site.score_function = score
