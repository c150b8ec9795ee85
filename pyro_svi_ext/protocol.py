"""The estimator protocol: what :class:`~pyro_svi_ext.SVI` and ``compile/`` call on an
estimator, with public names. :class:`~pyro_svi_ext.estimators.base.ELBO` implements it
and derives ``loss``, ``loss_and_grads`` and ``differentiable_loss`` from it once.

An estimator supplies:

- :meth:`Estimator.particles`: run model and guide, one
  :class:`~pyro_svi_ext.trace.TracePair` per particle (or per enumeration branch);
- :meth:`Estimator.estimate`: from those pairs, the ELBO estimate and the surrogate
  whose gradient is the estimator's gradient (both "to maximize"), and the facts a
  compiled step must replay (:class:`CompileFacts`), returned rather than stored.

The simplest estimator overrides ``particle_surrogate`` (and maybe ``particle_elbo``):
per-particle functions that the default :meth:`Estimator.estimate` averages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class CompileFacts:
    """What an eager step learnt that tracing cannot see again (fake tensors carry no
    provenance, and the param store cannot be written from a graph).

    ``structure``: an estimator's dependency structure to replay while tracing (e.g.
    TraceGraph_ELBO's downstream terms), or None. ``side_state``: param-store names the
    step rewrites outside any optimizer (TraceGraph_ELBO's decaying averages); a
    compiled step carries them as inputs it updates in place.
    """

    structure: object = None
    side_state: tuple[str, ...] = ()


@dataclass(frozen=True)
class Estimate:
    """One step's estimate.

    ``elbo``: the objective's value (a 0-dim tensor, or ``0.0`` when nothing is random).
    ``surrogate``: a 0-dim tensor whose gradient is the gradient estimate of ``elbo``,
    or None when not asked for, or ``0.0`` when no parameter reaches it.
    ``facts``: see :class:`CompileFacts`.
    ``side_updates``: new values of ``facts.side_state`` (name -> tensor), for the caller
    to write once the loss is known to be finite (an eager step writes the param store,
    a compiled step its inputs).
    """

    elbo: torch.Tensor | float
    surrogate: torch.Tensor | float | None = None
    facts: CompileFacts = field(default_factory=CompileFacts)
    side_updates: dict = field(default_factory=dict)


@dataclass
class StepResult:
    """What one eager loss-and-gradients step gives its caller: the loss (a float,
    ``-elbo``), the params touched (name -> unconstrained tensor, gradients written in
    ``.grad``) and the compile facts."""

    loss: float
    params: dict
    facts: CompileFacts = field(default_factory=CompileFacts)


class Estimator(ABC):
    """The protocol (see the module docstring). ``estimator_name`` defaults to the class
    name."""

    estimator_name: str = "Estimator"

    @abstractmethod
    def particles(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> list:
        """One :class:`~pyro_svi_ext.trace.TracePair` per particle or branch."""

    @abstractmethod
    def estimate(self, pairs: list, surrogate: bool = True) -> Estimate:
        """The :class:`Estimate` of ``pairs`` (the surrogate only if asked: computing it
        may update state, e.g. decaying-average baselines)."""

    @abstractmethod
    def check_finite(self, loss: float, pairs: list) -> None:
        """Raise or warn for a non-finite ``loss`` (see the estimator's docs)."""

    @abstractmethod
    def tracing(self, facts: CompileFacts, side_state: dict) -> AbstractContextManager:
        """A context for tracing a compiled step: replay ``facts.structure``, read and
        write ``facts.side_state`` in ``side_state`` (name -> tensor)."""

    @abstractmethod
    def loss_and_params(self, model: Callable, guide: Callable, args: tuple,
                        kwargs: dict) -> StepResult:
        """One eager loss-and-gradients step (the loss's backward run)."""

    @abstractmethod
    def stepper(self, model: Callable, guide: Callable):
        """What :class:`~pyro_svi_ext.SVI` calls for each step of ``(model, guide)``:
        an object with ``loss_and_params(args, kwargs) -> StepResult`` and
        ``whole_step(optim, args, kwargs, lazy=False)`` (the loss after a step that
        included the optimizer's update, or None when SVI must update)."""
