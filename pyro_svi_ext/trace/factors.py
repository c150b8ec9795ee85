"""The factor graph of one enumerated particle: the model's log-probs split into costs
and log-factors over model-enumerated variables, the guide's DiCE factors, and the
checks TraceEnum_ELBO makes on them (Pyro's messages first)."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass

import torch

from pyro_svi_ext.kernels import is_identically_zero
from pyro_svi_ext.pyro_compat import enumerate_dim
from pyro_svi_ext.trace.enum import ENUM_TOTAL, enum_label, ordinal, packed
from pyro_svi_ext.trace.run import TracePair
from pyro_svi_ext.trace.sites import Site


@dataclass
class ModelFactors:
    """The model side of one particle, split for contraction.

    ``costs``: ``{ordinal: [Factor]}`` scaled log-probs free of model enumeration;
    ``log_factors``: ``{ordinal: [Factor]}`` unscaled log-probs touching enumerated
    variables; ``sum_labels``: those variables' labels; ``scale``: their common scale.
    """

    costs: dict
    log_factors: dict
    sum_labels: set
    scale: float | torch.Tensor


def _common_scale(scales: list, names: list[str]):
    values = set()
    for scale in scales:
        if torch.is_tensor(scale) and scale.dim():
            raise ValueError(f"enumeration only supports scalar poutine.scale (sites {names})")
        values.add(float(scale))
    if len(values) > 1:
        raise ValueError("Expected all enumerated sample sites to share a common "
                         f"poutine.scale, but found {len(values)} different scales: sites "
                         f"{names} touch enumerated variables with scales {sorted(values)}")
    return scales[0] if scales else 1.0


def check_plate_restriction(pair: TracePair) -> None:
    """``ValueError`` naming both sites when a site outside a plate depends on a variable
    enumerated inside it (the restriction TraceEnum_ELBO's doc states)."""
    owners = {}
    for sites in (pair.guide, pair.model):
        for site in sites.values():
            label = enum_label(site)
            if label is not None:
                owners.setdefault(label, site)
    for sites in (pair.model, pair.guide):
        for site in sites.values():
            for label in packed(site, site.log_prob).dims:
                owner = owners.get(label)
                if owner is not None and not ordinal(owner) <= ordinal(site):
                    outside = sorted(n for _, n in ordinal(owner) - ordinal(site))
                    raise ValueError(
                        f"site {site.name!r} is outside plate(s) {outside} but depends on "
                        f"{owner.name!r}, enumerated inside them; TraceEnum_ELBO requires "
                        "that variables outside a plate do not depend on variables inside it")


def model_factors(pair: TracePair) -> ModelFactors:
    """Split the model's log-probs of one particle into costs and log-factors over the
    variables enumerated in the model (not in the guide). ``ValueError`` (Pyro's message)
    when a model-enumerated variable is more global than an enumerated guide variable,
    or when the sites touching model-enumerated variables have different scales."""
    guide_labels = set()
    for site in pair.guide.values():
        guide_labels.update(packed(site, site.log_prob).dims)
    cost_sites, enum_sites, sum_labels = [], [], set()
    for name, site in pair.model.items():
        if name in pair.guide or enumerate_dim(site.infer) is None:
            cost_sites.append(site)
        else:
            enum_sites.append(site)
            sum_labels.update(packed(site, site.unscaled).dims)
    sum_labels = {d for d in sum_labels if d[0] == "enum"} - guide_labels
    if enum_sites:
        check_enumeration_locality(enum_sites, pair.guide)
    costs: dict = {}
    log_factors: dict = {}
    scales, scaled_names = [], []
    for site in cost_sites:
        factor = packed(site, site.log_prob)
        if sum_labels.isdisjoint(factor.dims):
            costs.setdefault(ordinal(site), []).append(factor)
        else:
            log_factors.setdefault(ordinal(site), []).append(packed(site,
                                                                    site.masked_log_prob))
            scales.append(site.scale)
            scaled_names.append(site.name)
    for site in enum_sites:
        log_factors.setdefault(ordinal(site), []).append(packed(site, site.unscaled))
        scales.append(site.scale)
        scaled_names.append(site.name)
    return ModelFactors(costs, log_factors, sum_labels, _common_scale(scales, scaled_names))


def guide_dice_factors(pair: TracePair) -> tuple[dict, dict]:
    """Per ordinal: the guide's DiCE log-factors (``{ordinal: [Factor]}``: score terms
    ``log q - log q.detach()`` of sampled sites, ``log q`` of enumerated ones) and log
    denominators of sequentially enumerated sites (``{ordinal: float}``)."""
    log_probs: dict = {}
    log_denoms: dict = {}
    for site in pair.guide.values():
        t = ordinal(site)
        score = site.score_function
        num_samples = site.infer.get("num_samples") if site.infer.get("enumerate") else None
        if site.infer.get("enumerate") and num_samples is not None:
            if not is_identically_zero(score):
                score = score - score.detach()
            score = score - math.log(num_samples)
            if not torch.is_tensor(score):
                score = torch.tensor(float(score), device=site.value.device)
            score = score.expand(torch.broadcast_shapes(score.shape, site.log_prob.shape))
        elif site.infer.get("enumerate") == "sequential":
            log_denoms[t] = log_denoms.get(t, 0.0) + math.log(site.infer[ENUM_TOTAL])
        elif not site.infer.get("enumerate") and not is_identically_zero(score):
            score = score - score.detach()
        if not is_identically_zero(score):
            log_probs.setdefault(t, []).append(packed(site, score))
    return log_probs, log_denoms


def check_enumeration_locality(model_enumerated: list[Site], guide: dict[str, Site]) -> None:
    """``ValueError`` when a guide-enumerated site sits in a plate that some
    model-enumerated site is outside of: the model's sum would then run over one value
    per plate element of the guide's variable, which TraceEnum_ELBO does not compute."""
    common = frozenset.intersection(*(ordinal(s) for s in model_enumerated))
    for name, site in guide.items():
        if enumerate_dim(site.infer) is None:
            continue
        for frame in site.frames:
            if frame.dim is not None and ("plate", frame.name) not in common:
                raise ValueError(
                    "Expected model enumeration to be no more global than guide "
                    f"enumeration, but found model enumeration sites upstream of guide site "
                    f"{name!r} in plate({frame.name!r}). Try converting some model "
                    "enumeration sites to guide enumeration sites.")


def _independent(counters: dict, others: dict) -> bool:
    return any(name in others and others[name] != c for name, c in counters.items())


def warn_invalid_enum_dependencies(pair: TracePair) -> None:
    """Warn (``RuntimeWarning``, Pyro's "possibly invalid dependency") when a site outside
    a plate comes after a guide-enumerated site inside it: it may depend on that
    variable, which enumeration over synchronized plate elements cannot represent."""
    enumerated = {n for n, s in pair.guide.items() if s.infer.get("enumerate")}
    for role, sites in (("model", pair.model), ("guide", pair.guide)):
        counters: dict[str, dict] = {}
        contexts: dict[frozenset, set] = defaultdict(set)
        for name, site in sites.items():
            counter = {f.name: f.counter for f in site.frames if f.dim is None}
            context = frozenset(f for f in site.frames if f.dim is not None)
            for inner, names in contexts.items():
                if not context < inner:
                    continue
                upstream = sorted(n for n in names if not _independent(counter, counters[n]))
                if upstream:
                    plates = sorted(f.name for f in inner - context)
                    warnings.warn(
                        f'at {role} site "{name}", possibly invalid dependency. Expected '
                        f"site {name!r} to precede sites {upstream} to avoid breaking "
                        f"independence of plates {plates}", RuntimeWarning, stacklevel=5)
            counters[name] = counter
            if name in enumerated:
                contexts[context].add(name)


def warn_sample_counts(pair: TracePair) -> None:
    """Pyro's warnings for local sampling (``infer={"num_samples": n}``): different
    counts on guide sites (biased unless the guide factorizes), and a sampled model site
    that the guide lacks (its gradient estimate is wrong)."""
    counts = {s.infer.get("num_samples") for s in pair.guide.values()
              if s.infer.get("enumerate") == "parallel"
              and s.infer.get("num_samples") is not None}
    if len(counts) > 1:
        warnings.warn("Using different numbers of Monte Carlo samples for different guide "
                      "sites in TraceEnum_ELBO.\nThis may be biased if the guide is not "
                      "factorized", UserWarning, stacklevel=5)
    for name, site in pair.model.items():
        if (site.infer.get("enumerate") == "parallel" and site.infer.get("num_samples")
                and name not in pair.guide):
            warnings.warn(f"Site {name} is multiply sampled in model, expect incorrect "
                          "gradient estimates from TraceEnum_ELBO. Consider using exact "
                          "enumeration or guide sampling if possible.", RuntimeWarning,
                          stacklevel=5)
