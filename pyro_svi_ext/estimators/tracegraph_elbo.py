"""TraceGraph_ELBO: score-function terms that use only the costs downstream of each
non-reparameterized site, with optional baselines."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import pyro
import torch

from pyro_svi_ext.estimators.base import ELBO
from pyro_svi_ext.kernels import (
    baseline_loss,
    decayed_average,
    is_identically_zero,
    reduce_costs,
)
from pyro_svi_ext.protocol import CompileFacts, Estimate
from pyro_svi_ext.trace import Site, TracePair
from pyro_svi_ext.trace.provenance import sources_of, untrack

_BASELINE_KEYS = {"nn_baseline", "nn_baseline_input", "use_decaying_avg_baseline",
                  "baseline_beta", "baseline_value"}
#: param-store name prefix of decaying-average baselines (the name Pyro uses, so saved
#: param stores carry over)
AVG_BASELINE_PREFIX = "__baseline_avg_downstream_cost_"


@dataclass(frozen=True)
class BaselineOptions:
    """A site's ``infer={"baseline": {...}}`` options, validated."""

    nn_baseline: torch.nn.Module | None = None
    nn_baseline_input: torch.Tensor | None = None
    use_decaying_avg_baseline: bool = False
    baseline_beta: float = 0.90
    baseline_value: torch.Tensor | None = None

    @classmethod
    def of(cls, site: Site) -> BaselineOptions:
        """Raises ``ValueError`` naming the site for unknown keys or invalid combinations."""
        options = dict(site.infer.get("baseline", {}))
        unknown = set(options) - _BASELINE_KEYS
        if unknown:
            raise ValueError(f"site {site.name!r}: unknown baseline options {sorted(unknown)}; "
                             f"expected some of {sorted(_BASELINE_KEYS)}")
        opts = cls(**options)
        if opts.nn_baseline is not None and opts.baseline_value is not None:
            raise ValueError(f"site {site.name!r}: use either nn_baseline or baseline_value, "
                             "not both")
        if opts.nn_baseline is not None and opts.nn_baseline_input is None:
            raise ValueError(f"site {site.name!r}: nn_baseline needs nn_baseline_input")
        if not 0.0 <= opts.baseline_beta < 1.0:
            raise ValueError(f"site {site.name!r}: baseline_beta must be in [0, 1), "
                             f"got {opts.baseline_beta}")
        return opts


class _Averages:
    """Decaying averages during one estimate: read from this estimate's own updates
    first (a later particle sees an earlier one's), then from a compiled step's bound
    inputs, else from the param store (zero when missing); updates are collected in
    ``updates`` for the caller to write, never written here."""

    def __init__(self, bound: dict | None):
        self.bound = bound
        self.updates: dict[str, torch.Tensor] = {}

    def read(self, name: str, cost: torch.Tensor) -> torch.Tensor:
        if name in self.updates:
            return self.updates[name]
        if self.bound is not None:
            return self.bound[name]
        store = pyro.get_param_store()  # not pyro.param: the average is no optimizer's
        if name in store:
            return store[name].detach()
        return torch.zeros(cost.shape, device=cost.device)

    def write(self, name: str, value: torch.Tensor) -> None:
        self.updates[name] = value


def _baseline(name: str, site: Site, cost: torch.Tensor, averages: _Averages):
    """``(baseline or None, loss that trains it or 0)`` for one site's downstream cost;
    a decaying average is read from and its update written to ``averages``."""
    opts = BaselineOptions.of(site)
    baseline = None
    if opts.use_decaying_avg_baseline:
        param_name = AVG_BASELINE_PREFIX + name
        average = averages.read(param_name, cost)
        averages.write(param_name, decayed_average(average, cost, opts.baseline_beta))
        baseline = average
    if opts.nn_baseline is not None:
        learned = opts.nn_baseline(opts.nn_baseline_input.detach())
        baseline = learned if baseline is None else baseline + learned
    elif opts.baseline_value is not None:
        baseline = opts.baseline_value if baseline is None else baseline + opts.baseline_value
    loss = 0.0
    if opts.nn_baseline is not None or opts.baseline_value is not None:
        loss = baseline_loss(cost, baseline)
    if baseline is not None and torch.as_tensor(baseline).shape != cost.shape:
        raise ValueError(f"site {name!r}: baseline shape {tuple(baseline.shape)} differs from "
                         f"its downstream cost shape {tuple(cost.shape)}")
    return baseline, loss


#: for each non-reparameterized site, the ``(side, site name)`` of the log-prob terms
#: computed from its value ("model" terms count ``+log p``, "guide" terms ``-log q``)
Structure = dict[str, list[tuple[str, str]]]


def dependency_structure(pair: TracePair) -> Structure:
    """Which log-prob terms each non-reparameterized site's value flows into, in trace
    order, read from the provenance the trace layer tracked."""
    structure: Structure = {}
    for side, sites in (("model", pair.model), ("guide", pair.guide)):
        for site in sites.values():
            for source in sorted(sources_of(site.log_prob_sum)):
                structure.setdefault(source, []).append((side, site.name))
    return structure


def downstream_terms(pair: TracePair, structure: Structure
                     ) -> dict[str, list[tuple[frozenset, torch.Tensor]]]:
    """For each non-reparameterized site: the ``(plate frames, log-prob)`` terms of
    ``structure`` (model terms ``+log p``, guide terms ``-log q``)."""
    terms: dict[str, list] = {}
    for source, where in structure.items():
        for side, name in where:
            site = (pair.model if side == "model" else pair.guide)[name]
            value = untrack(site.log_prob)
            terms.setdefault(source, []).append(
                (site.plate_frames, value if side == "model" else -value))
    return terms


class TraceGraph_ELBO(ELBO):
    """ELBO whose score-function terms are Rao-Blackwellized by dependency tracking
    (``pyro.infer.TraceGraph_ELBO``'s contract).

    Each non-reparameterized guide site ``z`` gets the surrogate term
    ``sum(log q(z) * (cost_z - baseline_z).detach())`` where ``cost_z`` sums only the
    log-prob terms computed from ``z``'s value (found by provenance tracking, which
    respects sample order, ``plate`` and sequential ``plate`` independence), with plates
    that ``z`` is not inside summed out.

    Baselines, per site via ``infer={"baseline": {...}}``:
    ``use_decaying_avg_baseline`` (+ ``baseline_beta``, default 0.9; the average lives
    in the param store as ``__baseline_avg_downstream_cost_<site>``), ``nn_baseline``
    with ``nn_baseline_input`` (register the module with ``pyro.module`` so SVI trains
    it on the squared-error baseline loss), or a fixed ``baseline_value``.

    Errors: those of :class:`~pyro_svi_ext.estimators.base.ELBO`; ``ValueError`` naming
    the site for unknown baseline options, ``nn_baseline`` with ``baseline_value``, a
    missing ``nn_baseline_input``, ``baseline_beta`` outside [0, 1), or a baseline whose
    shape differs from the site's downstream cost.
    """

    track_nonreparam = True
    #: while a compiled step is traced (see :meth:`tracing`): the dependency structure
    #: to use instead of tracking provenance (fake tensors cannot be tracked), and the
    #: decaying averages' input tensors
    _replayed: Structure | None = None
    _bound: dict | None = None

    @contextmanager
    def tracing(self, facts: CompileFacts, side_state: dict):
        """Trace without provenance tracking, taking ``facts.structure`` (found by an
        eager step of the same model and guide) as the dependencies, and reading the
        decaying averages from ``side_state``."""
        replay = facts.structure is not None
        if replay:
            self.track_nonreparam, self._replayed = False, facts.structure
        self._bound = side_state
        try:
            yield
        finally:
            if replay:
                del self.track_nonreparam
                self._replayed = None
            self._bound = None

    def particle_elbo(self, pair: TracePair) -> torch.Tensor:
        return untrack(super().particle_elbo(pair))

    def estimate(self, pairs: list[TracePair], surrogate: bool = True) -> Estimate:
        """The mean ELBO and surrogate; the facts are the dependency structure and the
        decaying averages updated (their new values in ``side_updates``)."""
        elbo = sum(map(self.particle_elbo, pairs[1:]), self.particle_elbo(pairs[0]))
        elbo = elbo / self.num_particles
        if not surrogate:
            return Estimate(elbo)
        averages = _Averages(self._bound)
        total, structure = 0.0, None
        for pair in pairs:
            structure = self._replayed or dependency_structure(pair)
            total = total + self._surrogate(pair, structure, averages)
        facts = CompileFacts(structure, tuple(sorted(averages.updates)))
        return Estimate(elbo, total / self.num_particles, facts, averages.updates)

    def particle_surrogate(self, pair: TracePair) -> torch.Tensor:
        return self._surrogate(pair, self._replayed or dependency_structure(pair),
                               _Averages(self._bound))

    @staticmethod
    def _surrogate(pair: TracePair, structure: Structure, averages: _Averages):
        surrogate = sum(untrack(s.log_prob_sum) for s in pair.model.values())
        for site in pair.guide.values():
            if not is_identically_zero(site.entropy_term):
                surrogate = surrogate - untrack(site.entropy_term).sum()
        for name, terms in downstream_terms(pair, structure).items():
            site = pair.guide.get(name)
            if site is None:  # a model-only latent: no guide score to weight
                continue
            frames = site.plate_frames
            cost = reduce_costs(
                [(value, [f.dim for f in group if f not in frames]) for group, value in terms])
            baseline, loss = _baseline(name, site, cost, averages)
            if baseline is not None:
                cost = cost - baseline
                surrogate = surrogate - loss
            score = untrack(site.score_function)
            surrogate = surrogate + (score * cost.detach()).sum()
        return surrogate
