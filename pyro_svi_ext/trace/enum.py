"""Enumeration in the trace layer: run guide and model under pyro's ``EnumMessenger``,
branch over sequentially enumerated guide sites, and label log-prob dims.

Labels: ``("plate", name)`` for a vectorized plate's dim, ``("enum", id)`` for an
enumerated variable's dim (the unique id pyro's enumeration gives each variable, so a
dim recycled by ``pyro.markov`` still names the right variable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pyro.poutine.enum_messenger import EnumMessenger

from pyro_svi_ext.kernels.sumproduct import Factor, pack
from pyro_svi_ext.pyro_compat import dim_ids, enumerate_dim
from pyro_svi_ext.trace.recorder import SUBSAMPLES, SequentialBranch, run_recorded
from pyro_svi_ext.trace.run import TracePair, finish_pair, vectorize_particles
from pyro_svi_ext.trace.sites import Site

#: the infer key a sequentially enumerated site carries: how many values its branches take
ENUM_TOTAL = "_enum_total"


def plate_label(name: str) -> tuple:
    return ("plate", name)


def ordinal(site: Site) -> frozenset:
    """The plate labels of the site's vectorized plates."""
    return frozenset(plate_label(f.name) for f in site.frames if f.dim is not None)


def dim_labels(site: Site) -> dict[int, tuple]:
    """Negative dim -> label for the site's batch dims."""
    labels = {f.dim: plate_label(f.name) for f in site.frames if f.dim is not None}
    for dim, uid in dim_ids(site.infer).items():
        labels.setdefault(dim, ("enum", uid))
    return labels


def enum_label(site: Site) -> tuple | None:
    """The label of the site's own enumerated dim, or None if it is not enumerated."""
    dim = enumerate_dim(site.infer)
    if dim is None:
        return None
    return ("enum", dim_ids(site.infer)[dim])


def packed(site: Site, tensor) -> Factor:
    """``tensor`` (batch-shaped like the site's log-prob) as a labeled factor.

    ``ValueError`` naming the site when a dim belongs to no plate and no enumeration.
    """
    try:
        return pack(tensor, dim_labels(site))
    except ValueError as err:
        raise ValueError(f"site {site.name!r}: {err}; put it in a plate or give "
                         "max_plate_nesting room for enumeration") from err


def is_enumerated(site: Site) -> bool:
    return enumerate_dim(site.infer) is not None or ENUM_TOTAL in site.infer


def _run_branch(model, guide, args, kwargs, max_plate_nesting, assignment) -> TracePair:
    guide = EnumMessenger(first_available_dim=-1 - max_plate_nesting)(guide)
    model = EnumMessenger()(model)
    guide_run, _ = run_recorded(guide, args, kwargs, sequential=assignment)
    model_run, ret = run_recorded(model, args, kwargs, against=guide_run)
    return finish_pair(guide_run, model_run, ret, max_plate_nesting)


def enum_pairs(model: Callable, guide: Callable, args: tuple, kwargs: dict,
               max_plate_nesting: int, num_particles: int = 1,
               vectorize: bool = False) -> Iterator[TracePair]:
    """One :class:`TracePair` per particle and per branch of the sequentially enumerated
    guide sites (branches are explored last-value-first, as pyro's queue does)."""
    if vectorize and num_particles > 1:
        model = vectorize_particles(model, num_particles, -max_plate_nesting)
        guide = vectorize_particles(guide, num_particles, -max_plate_nesting)
    for _ in range(1 if vectorize else num_particles):
        stack: list[dict] = [{}]
        while stack:
            assignment = stack.pop()
            try:
                yield _run_branch(model, guide, args, kwargs, max_plate_nesting, assignment)
            except SequentialBranch as branch:
                # every branch reuses what the run drew before the site, as pyro's queue does
                prefix = {**branch.sites, **assignment, SUBSAMPLES: branch.subsamples}
                total = len(branch.values)
                for value in branch.values:
                    infer = {**branch.infer, ENUM_TOTAL: total}
                    stack.append({**prefix, branch.name: (value, infer)})
