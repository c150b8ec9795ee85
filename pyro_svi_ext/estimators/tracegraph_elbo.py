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


class _StoreAverages:
    """Decaying averages kept in the param store (eager steps): read, created at zero
    when missing, and replaced by their update."""

    def read(self, name: str, cost: torch.Tensor) -> torch.Tensor:
        store = pyro.get_param_store()  # not pyro.param: the average is no optimizer's
        with torch.no_grad():
            return store.get_param(name, torch.zeros(cost.shape, device=cost.device))

    def write(self, name: str, value: torch.Tensor) -> None:
        pyro.get_param_store()[name] = value


class _BoundAverages:
    """Decaying averages held in ``values`` (name -> tensor) while a compiled step is
    traced: read from its inputs, updated values left in ``values``."""

    def __init__(self, values: dict):
        self.values = values

    def read(self, name: str, cost: torch.Tensor) -> torch.Tensor:
        return self.values[name]

    def write(self, name: str, value: torch.Tensor) -> None:
        self.values[name] = value


def _baseline(name: str, site: Site, cost: torch.Tensor, averages, used: list):
    """``(baseline or None, loss that trains it or 0)`` for one site's downstream cost;
    a decaying average is read from and written to ``averages``, its name appended to
    ``used``."""
    opts = BaselineOptions.of(site)
    baseline = None
    if opts.use_decaying_avg_baseline:
        param_name = AVG_BASELINE_PREFIX + name
        average = averages.read(param_name, cost)
        averages.write(param_name, decayed_average(average, cost, opts.baseline_beta))
        used.append(param_name)
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

    estimator_name = "TraceGraph_ELBO"
    track_nonreparam = True
    #: the dependency structure to use instead of tracking provenance (compiled steps
    #: trace with fake tensors, which cannot be tracked; see :meth:`_replaying`)
    _replayed: Structure | None = None
    _last_structure: Structure | None = None

    #: where decaying averages live: the param store, or a compiled step's trace
    _averages: _StoreAverages | _BoundAverages = _StoreAverages()
    _last_averages: tuple[str, ...] = ()

    def _static_structure(self) -> Structure | None:
        return self._last_structure

    def _side_state(self) -> list[str]:
        """The decaying averages the last eager particle updated (param-store names)."""
        return sorted(set(self._last_averages))

    @contextmanager
    def _side_state_in(self, values: dict):
        self._averages = _BoundAverages(values)
        try:
            yield
        finally:
            del self._averages

    @contextmanager
    def _replaying(self, structure: Structure | None):
        """Trace without provenance tracking, taking ``structure`` (recorded by an eager
        step of the same model and guide) as the dependencies."""
        if structure is None:
            yield
            return
        self.track_nonreparam, self._replayed = False, structure
        try:
            yield
        finally:
            del self.track_nonreparam
            self._replayed = None

    def _particle_elbo(self, pair: TracePair) -> torch.Tensor:
        return untrack(super()._particle_elbo(pair))

    def _particle_surrogate(self, pair: TracePair) -> torch.Tensor:
        surrogate = sum(untrack(s.log_prob_sum) for s in pair.model.values())
        for site in pair.guide.values():
            if not is_identically_zero(site.entropy_term):
                surrogate = surrogate - untrack(site.entropy_term).sum()
        structure = self._replayed
        if structure is None:
            structure = self._last_structure = dependency_structure(pair)
        used: list[str] = []
        for name, terms in downstream_terms(pair, structure).items():
            site = pair.guide.get(name)
            if site is None:  # a model-only latent: no guide score to weight
                continue
            frames = site.plate_frames
            cost = reduce_costs(
                [(value, [f.dim for f in group if f not in frames]) for group, value in terms])
            baseline, loss = _baseline(name, site, cost, self._averages, used)
            if baseline is not None:
                cost = cost - baseline
                surrogate = surrogate - loss
            score = untrack(site.score_function)
            surrogate = surrogate + (score * cost.detach()).sum()
        if self._replayed is None:
            self._last_averages = tuple(used)
        return surrogate
