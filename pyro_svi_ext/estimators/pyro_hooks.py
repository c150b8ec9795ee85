"""Pyro's protected ELBO hooks, for code written against ``pyro.infer``'s estimators.

Code in the wild subclasses Pyro's ``Trace_ELBO`` and overrides
``_differentiable_loss_particle(model_trace, guide_trace)`` or ``_get_trace`` (e.g.
``pyro.contrib.cevae.TraceCausalEffect_ELBO``), or calls helpers such as
``ELBO._guess_max_plate_nesting`` (Pyro's ``EnergyDistance``). This mixin gives the
package's estimators those members with Pyro's meaning, over ``pyro.poutine.Trace``
objects, and the drivers that honour an override: when a subclass defined outside this
package overrides a hook, :class:`~pyro_svi_ext.Trace_ELBO` computes through the hooks
(eagerly, as Pyro does); the other estimators refuse such a subclass at construction
rather than ignore its override.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyro
import torch

from pyro_svi_ext.trace import guess_plate_nesting
from pyro_svi_ext.trace.pyro_traces import importance_traces, pair_from_traces

#: Pyro's protected per-trace hooks that a subclass may override
PYRO_HOOKS = ("_get_trace", "_get_traces", "_get_vectorized_trace",
              "_differentiable_loss_particle", "_loss_and_grads_particle")


def overridden_hooks(cls: type) -> tuple[str, ...]:
    """The Pyro hooks that ``cls`` takes from a class defined outside this package."""
    found = []
    for name in PYRO_HOOKS:
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if owner is not None and not owner.__module__.startswith("pyro_svi_ext."):
            found.append(name)
    return tuple(found)


class PyroHooks:
    """Pyro's protected ELBO members (``_guess_max_plate_nesting``,
    ``_vectorized_num_particles``, ``_get_vectorized_trace``, ``_get_trace``,
    ``_get_traces``) and the drivers that go through them."""

    #: hooks a subclass outside this package overrides (set per class)
    _pyro_hooks: tuple[str, ...] = ()
    #: whether this estimator computes through overridden hooks (Trace_ELBO) or refuses
    _honours_pyro_hooks = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._pyro_hooks = overridden_hooks(cls)

    def _refuse_unhonoured_hooks(self) -> None:
        """``NotImplementedError`` naming the hooks, for an estimator that does not
        compute through Pyro's hooks but whose subclass overrides some."""
        if self._pyro_hooks and not self._honours_pyro_hooks:
            raise NotImplementedError(
                f"{type(self).__name__} overrides Pyro's {list(self._pyro_hooks)}, which "
                f"pyro_svi_ext's {type(self).__mro__[1].__name__} does not call (it "
                "computes from its own site records); subclass pyro_svi_ext.Trace_ELBO, "
                "whose hooks are honoured, or override particle_elbo/particle_surrogate")

    # --- Pyro's helpers ---------------------------------------------------------------
    def _guess_max_plate_nesting(self, model: Callable, guide: Callable, args: tuple,
                                 kwargs: dict) -> None:
        """Set ``max_plate_nesting`` from one run of guide and model (+1 for vectorized
        particles)."""
        self.max_plate_nesting = guess_plate_nesting(model, guide, args, kwargs)
        if self.vectorize_particles and self.num_particles > 1:
            self.max_plate_nesting += 1

    def _vectorized_num_particles(self, fn: Callable) -> Callable:
        """``fn`` inside the particle plate (at dim ``-max_plate_nesting``)."""
        if self.num_particles == 1:
            return fn
        return pyro.plate("num_particles_vectorized", self.num_particles,
                          dim=-self.max_plate_nesting)(fn)

    def _get_vectorized_trace(self, model, guide, args, kwargs):
        return self._get_trace(self._vectorized_num_particles(model),
                               self._vectorized_num_particles(guide), args, kwargs)

    def _get_trace(self, model, guide, args, kwargs):
        """``(model_trace, guide_trace)`` of one particle (``pyro.poutine.Trace``)."""
        return importance_traces(model, guide, args, kwargs, self.max_plate_nesting,
                                 self.estimator_name)

    def _get_traces(self, model, guide, args, kwargs) -> Iterator:
        """One ``(model_trace, guide_trace)`` per particle (one if vectorized)."""
        if self.vectorize_particles:
            if self.max_plate_nesting == float("inf"):
                self._guess_max_plate_nesting(model, guide, args, kwargs)
            yield self._get_vectorized_trace(model, guide, args, kwargs)
        else:
            for _ in range(self.num_particles):
                yield self._get_trace(model, guide, args, kwargs)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        """``(loss, surrogate_loss)`` of one particle: the negative ELBO (float) and the
        negative surrogate (tensor)."""
        pair = pair_from_traces(model_trace, guide_trace)
        return -float(self.particle_elbo(pair)), -self.particle_surrogate(pair)

    # --- drivers through the hooks ------------------------------------------------------
    def _hooked_terms(self, model, guide, args, kwargs):
        """``(loss, surrogate_loss, params)`` averaged over particles, from the hooks."""
        loss, surrogate, params = 0.0, 0.0, {}
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle_loss, particle_surrogate = self._differentiable_loss_particle(
                model_trace, guide_trace)
            loss = loss + particle_loss / self.num_particles
            surrogate = surrogate + particle_surrogate / self.num_particles
            params.update(pair_from_traces(model_trace, guide_trace).params)
        return loss, surrogate, params

    def _hooked_loss(self, model, guide, args, kwargs) -> float:
        """Pyro's ``Trace_ELBO.loss``: ``log p - log q`` of the traces ``_get_traces``
        gives (``_differentiable_loss_particle`` is not consulted, as in Pyro)."""
        elbo = 0.0
        with torch.no_grad():
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                elbo += (float(model_trace.log_prob_sum())
                         - float(guide_trace.log_prob_sum())) / self.num_particles
        return -elbo

    def _hooked_loss_and_grads(self, model, guide, args, kwargs):
        loss, surrogate, params = self._hooked_terms(model, guide, args, kwargs)
        if params and getattr(surrogate, "requires_grad", False):
            surrogate.backward(retain_graph=self.retain_graph)
        return float(loss), params

    def _hooked_differentiable_loss(self, model, guide, args, kwargs):
        loss, surrogate, _ = self._hooked_terms(model, guide, args, kwargs)
        if not torch.is_tensor(surrogate):
            return torch.as_tensor(loss)
        return loss + (surrogate - surrogate.detach())
