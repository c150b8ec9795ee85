"""The ELBO base class: arguments, particles, and the loss / gradient drivers, derived
once from the estimator protocol (:mod:`~pyro_svi_ext.protocol`).

A subclass supplies per-particle functions over a :class:`~pyro_svi_ext.trace.TracePair`
(``particle_surrogate``, a scalar whose gradient is the gradient estimator, and maybe
``particle_elbo``, a float64 scalar), or a whole :meth:`ELBO.estimate`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import pyro
import torch
from pyro.poutine.util import is_validation_enabled

from pyro_svi_ext import validation
from pyro_svi_ext.errors import NonFiniteLossError, NonFiniteLossWarning
from pyro_svi_ext.estimators.diagnostics import site_losses
from pyro_svi_ext.estimators.pyro_hooks import PyroHooks
from pyro_svi_ext.kernels import float64_total
from pyro_svi_ext.protocol import CompileFacts, Estimate, Estimator, StepResult
from pyro_svi_ext.trace import (
    SiteRecorder,
    TracePair,
    nonfinite_sites,
    run_pair,
    vectorize_particles,
)

INF = float("inf")


def _check_plate_nesting(value: float) -> float:
    if value == INF:
        return value
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"max_plate_nesting must be a non-negative int or inf, got {value!r}")
    return int(value)


class ELBOModule(torch.nn.Module):
    """``torch.nn.Module`` whose ``forward(*args, **kwargs)`` is the differentiable loss.

    ``model`` and ``guide`` are held as attributes, so when they are modules their
    parameters are this module's parameters.
    """

    def __init__(self, model: Callable, guide: Callable, elbo: ELBO):
        super().__init__()
        self.model = model
        self.guide = guide
        self.elbo = elbo

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)


class ELBO(PyroHooks, Estimator):
    """Base of the evidence-lower-bound estimators (same arguments as ``pyro.infer.ELBO``
    in Pyro 1.8.6-1.9.2, in the same order).

    :param int num_particles: samples per estimate (>= 1).
    :param max_plate_nesting: bound on nested ``pyro.plate`` dims (int or ``inf``). Left
        at ``inf`` where a finite bound is needed (``vectorize_particles=True``,
        enumeration), it is guessed by running guide and model once, as Pyro does.
    :param max_iarange_nesting: deprecated alias of ``max_plate_nesting``
        (``DeprecationWarning``).
    :param bool vectorize_particles: draw all particles at once under an outer plate at dim
        ``-(max_plate_nesting + 1)``.
    :param bool strict_enumeration_warning: warn on enumeration the estimator ignores.
    :param bool ignore_jit_warnings: for the ``Jit*`` estimators, silence warnings raised
        while a step is traced for compilation (Pyro: ``torch.jit.TracerWarning``), and
        log (``logging``, not ``warnings``) a fall back to the eager step or to another
        compile backend; no effect on the eager estimators (as in Pyro).
    :param dict jit_options: for the ``Jit*`` estimators, keyword arguments of
        ``torch.jit.trace`` used by the ``"jit"`` (TorchScript) compile backend, e.g.
        ``{"check_trace": True}``; other backends and the eager estimators ignore it.
    :param retain_graph: passed to ``backward`` in :meth:`loss_and_grads`.
    :param float tail_adaptive_beta: kept for Pyro's ``TraceTailAdaptive_ELBO``, which
        this package does not implement; stored, no effect.

    Pyro's protected hooks (``_get_trace``, ``_get_traces``, ``_guess_max_plate_nesting``,
    ...; see :mod:`~pyro_svi_ext.estimators.pyro_hooks`) are available with Pyro's
    meaning; a subclass outside this package that overrides one is honoured by
    ``Trace_ELBO`` and refused (``NotImplementedError`` at construction) by the others.

    Errors: ``ValueError`` for a non-positive ``num_particles`` or a negative or
    non-integer ``max_plate_nesting``; :class:`~pyro_svi_ext.errors.NonFiniteLossError`
    from :meth:`loss_and_grads` when the loss is not finite under pyro validation
    (nothing is modified then). Guessing ``max_plate_nesting`` re-raises what guide or
    model raise.
    """

    #: the name used in messages: the class name unless a class sets its own
    estimator_name = "ELBO"
    #: whether the trace layer tracks which log-probs depend on non-reparameterized sites
    track_nonreparam = False
    #: whether the loss is a sum of per-site terms (see :meth:`site_losses`)
    additive_over_sites = True

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = INF,
        max_iarange_nesting: float | None = None,
        vectorize_particles: bool = False,
        strict_enumeration_warning: bool = True,
        ignore_jit_warnings: bool = False,
        jit_options: dict | None = None,
        retain_graph: bool | None = None,
        tail_adaptive_beta: float = -1.0,
    ):
        if max_iarange_nesting is not None:
            warnings.warn(
                "max_iarange_nesting is deprecated; use max_plate_nesting",
                DeprecationWarning,
                stacklevel=2,
            )
            max_plate_nesting = max_iarange_nesting
        if (
            not isinstance(num_particles, numbers.Integral)
            or isinstance(num_particles, bool)
            or num_particles < 1
        ):
            raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
        max_plate_nesting = _check_plate_nesting(max_plate_nesting)
        if jit_options is not None and not isinstance(jit_options, dict):
            raise TypeError(f"jit_options must be a dict of torch.jit.trace arguments, got "
                            f"{type(jit_options).__name__}")
        tail_adaptive_beta = validation.real(type(self).__name__, "tail_adaptive_beta",
                                             tail_adaptive_beta)
        if retain_graph is not None and not isinstance(retain_graph, bool):
            raise validation.ArgumentTypeError(
                f"{type(self).__name__}: retain_graph must be True, False or None, got "
                f"{retain_graph!r}")
        self.num_particles = int(num_particles)
        self.max_plate_nesting = max_plate_nesting
        self.vectorize_particles = bool(vectorize_particles)
        self.strict_enumeration_warning = strict_enumeration_warning
        self.retain_graph = retain_graph
        self.ignore_jit_warnings = ignore_jit_warnings
        self.jit_options = jit_options
        self.tail_adaptive_beta = tail_adaptive_beta
        if self.vectorize_particles and self.num_particles > 1:
            # the particle plate takes the next dim to the left
            self.max_plate_nesting += 1
        self._refuse_unhonoured_hooks()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "estimator_name" not in vars(cls):
            cls.estimator_name = cls.__name__

    def __call__(self, model: Callable, guide: Callable) -> ELBOModule:
        """A ``torch.nn.Module`` computing this loss for ``(model, guide)``."""
        return ELBOModule(model, guide, self)

    # --- the protocol: particles and their estimate -----------------------------------
    def particle_elbo(self, pair: TracePair) -> torch.Tensor:
        """``sum log p - sum log q`` over the particle's sites (float64 scalar)."""
        model = float64_total([s.log_prob_sum for s in pair.model.values()])
        guide = float64_total([s.log_prob_sum for s in pair.guide.values()])
        return model - guide

    def particle_surrogate(self, pair: TracePair) -> torch.Tensor:
        """A scalar whose gradient is this estimator's gradient estimate of the particle's
        ELBO (subclasses implement it, or :meth:`estimate`)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither "
                                  "particle_surrogate nor estimate")

    def estimate(self, pairs: list[TracePair], surrogate: bool = True) -> Estimate:
        """The mean of :meth:`particle_elbo` (and of :meth:`particle_surrogate`)."""
        elbo = sum(map(self.particle_elbo, pairs[1:]), self.particle_elbo(pairs[0]))
        if not surrogate:
            return Estimate(elbo / self.num_particles)
        total = sum(map(self.particle_surrogate, pairs[1:]),
                    self.particle_surrogate(pairs[0]))
        if len(pairs) == 1 and self.num_particles == 1:  # no division op to record
            return Estimate(elbo, total)
        return Estimate(elbo / self.num_particles, total / self.num_particles)

    def _ensure_plate_nesting(self, model: Callable, guide: Callable, args: tuple,
                              kwargs: dict) -> None:
        """Guess ``max_plate_nesting`` if it is ``inf`` (one extra run of guide and model,
        with their shapes validated), as Pyro does; +1 for vectorized particles."""
        if self.max_plate_nesting == INF:
            self._guess_max_plate_nesting(model, guide, args, kwargs)

    #: what a plugin declared its estimator supports (set at registration); enforced on
    #: each run (the built-ins follow Pyro instead: they warn)
    declared_capabilities = None

    def particles(self, model: Callable, guide: Callable, args: tuple,
                  kwargs: dict) -> list[TracePair]:
        """One :class:`TracePair` per particle (a single one when vectorized)."""
        pairs = self._run_particles(model, guide, args, kwargs)
        if self.declared_capabilities is not None:
            self._enforce_capabilities(pairs)
        return pairs

    def _enforce_capabilities(self, pairs: list[TracePair]) -> None:
        """``ValueError`` naming the first guide site a declared capability excludes."""
        caps = self.declared_capabilities
        for site in pairs[0].guide.values():
            if site.is_observed:
                continue
            if not caps.nonreparam and not site.reparameterized:
                raise ValueError(
                    f"{self.estimator_name} declares no support for non-reparameterized "
                    f"sites (Capabilities(nonreparam=False)), but guide site {site.name!r} "
                    f"({type(site.fn).__name__}) has no rsample")
            if not caps.reparam and site.reparameterized:
                raise ValueError(
                    f"{self.estimator_name} declares no support for reparameterized sites "
                    f"(Capabilities(reparam=False)), but guide site {site.name!r} is one")
            if not caps.enumeration and site.infer.get("enumerate"):
                raise ValueError(
                    f"{self.estimator_name} declares no enumeration "
                    f"(Capabilities(enumeration=False)), but guide site {site.name!r} asks "
                    f"for {site.infer['enumerate']!r} enumeration")

    def _run_particles(self, model: Callable, guide: Callable, args: tuple,
                       kwargs: dict) -> list[TracePair]:
        if self.vectorize_particles:
            self._ensure_plate_nesting(model, guide, args, kwargs)
            if self.num_particles > 1:
                dim = -int(self.max_plate_nesting)
                model = vectorize_particles(model, self.num_particles, dim)
                guide = vectorize_particles(guide, self.num_particles, dim)
            return [run_pair(model, guide, args, kwargs, self.max_plate_nesting,
                             self.estimator_name, self.track_nonreparam)]
        return [
            run_pair(model, guide, args, kwargs, self.max_plate_nesting, self.estimator_name,
                     self.track_nonreparam)
            for _ in range(self.num_particles)
        ]

    def check_finite(self, loss: float, pairs: list[TracePair]) -> None:
        """Under validation, :class:`~pyro_svi_ext.errors.NonFiniteLossError` naming the
        sites whose log-probs are not finite; otherwise a warning."""
        if math.isfinite(loss):
            return
        if is_validation_enabled():
            bad = [s for p in pairs for s in nonfinite_sites(p.model, p.guide)]
            raise NonFiniteLossError(loss, sorted(set(bad)))
        warnings.warn(f"{self.estimator_name}: encountered non-finite loss {loss}",
                      NonFiniteLossWarning, stacklevel=4)

    @contextmanager
    def tracing(self, facts: CompileFacts, side_state: dict):
        """Nothing to replay or to bind here (TraceGraph_ELBO has both)."""
        yield

    # --- the drivers, derived from the protocol ---------------------------------------
    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Estimate of the negative ELBO (float), averaged over ``num_particles``."""
        if self._pyro_hooks:
            return self._hooked_loss(model, guide, args, kwargs)
        with torch.no_grad():
            elbo = self.estimate(self.particles(model, guide, args, kwargs), False).elbo
            loss = -float(elbo)
        if math.isnan(loss):
            warnings.warn(f"{self.estimator_name}: encountered NaN loss", stacklevel=2)
        return loss

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Negative ELBO (float); runs ``backward`` on the surrogate loss so the params
        touched by model and guide get their gradient estimates in ``.grad``."""
        return self.stepper(model, guide).loss_and_params(args, kwargs).loss

    def loss_and_params(self, model: Callable, guide: Callable, args: tuple,
                        kwargs: dict) -> StepResult:
        """One eager step: the loss (float), the params touched (name -> unconstrained
        tensor, their gradients accumulated) and the compile facts. A non-finite loss is
        checked (:meth:`check_finite`) before any gradient exists."""
        if self._pyro_hooks:
            return StepResult(*self._hooked_loss_and_grads(model, guide, args, kwargs))
        pairs = self.particles(model, guide, args, kwargs)
        with SiteRecorder(params_only=True) as late:  # e.g. pyro.module in an nn baseline
            estimate = self.estimate(pairs)
        loss = -float(estimate.elbo)
        self.check_finite(loss, pairs)
        store = pyro.get_param_store()
        for name, value in estimate.side_updates.items():  # e.g. decaying averages
            store[name] = value
        params: dict = {}
        for pair in pairs:
            params.update(pair.params)
        params.update(late.params)
        if params and getattr(estimate.surrogate, "requires_grad", False):
            (-estimate.surrogate).backward(retain_graph=self.retain_graph)
        return StepResult(loss, params, estimate.facts)

    def objective(self, model: Callable, guide: Callable, args: tuple,
                  kwargs: dict) -> Estimate:
        """The :class:`Estimate` of one run of model and guide (what a compiled step
        traces)."""
        return self.estimate(self.particles(model, guide, args, kwargs))

    def stepper(self, model: Callable, guide: Callable) -> EagerStepper:
        """What :class:`~pyro_svi_ext.SVI` calls for each step (eager here; the ``Jit*``
        estimators return their compiled step)."""
        return EagerStepper(self, model, guide)

    def site_losses(self, model: Callable, guide: Callable, *args, **kwargs) -> dict:
        """Each sample site's share of the loss on one draw (``{site:``
        :class:`~pyro_svi_ext.estimators.diagnostics.SiteLoss` ``}``: its ``log p``, its
        ``log q``, and its share, also per plate element); the shares sum to
        :meth:`loss` on the same draws. For debugging a model; no gradient.

        ``NotImplementedError`` for an estimator whose loss is not a sum over sites
        (TraceEnum_ELBO sums enumerated sites jointly; RenyiELBO's bound is not a sum)."""
        if not self.additive_over_sites:
            raise NotImplementedError(f"{type(self).__name__}'s loss is not a sum of "
                                      "per-site terms; use Trace_ELBO's site_losses on the "
                                      "same model to see each site's term")
        with torch.no_grad():
            pairs = self.particles(model, guide, args, kwargs)
        return site_losses(pairs, self.num_particles)

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs):
        """Negative ELBO as a tensor whose gradient is the estimator's gradient."""
        if self._pyro_hooks:
            return self._hooked_differentiable_loss(model, guide, args, kwargs)
        estimate = self.objective(model, guide, args, kwargs)
        elbo, surrogate = estimate.elbo, estimate.surrogate
        if not torch.is_tensor(surrogate):
            return -torch.as_tensor(elbo)
        elbo = torch.as_tensor(elbo).to(dtype=surrogate.dtype, device=surrogate.device)
        return -(elbo + (surrogate - surrogate.detach()))


class EagerStepper:
    """An estimator's eager step for one ``(model, guide)``: loss and gradients only
    (:class:`~pyro_svi_ext.SVI` applies the optimizer)."""

    def __init__(self, elbo: ELBO, model: Callable, guide: Callable):
        self.elbo, self.model, self.guide = elbo, model, guide

    def loss_and_params(self, args: tuple, kwargs: dict) -> StepResult:
        return self.elbo.loss_and_params(self.model, self.guide, args, kwargs)

    def whole_step(self, optim, args: tuple, kwargs: dict, lazy: bool = False) -> None:
        return None
