"""SVI: stochastic variational inference driven by one of the package's ELBOs (or any
ELBO-like object or callable loss), with Pyro optimizers."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyro
import pyro.optim
import torch

from pyro_svi_ext.estimators.base import ELBO
from pyro_svi_ext.infer.optim_step import FusedStep
from pyro_svi_ext.infer.trace_posterior import TracePosterior
from pyro_svi_ext.trace import SiteRecorder, posterior_trace


def _custom_loss_and_grads(loss: Callable) -> Callable:
    def loss_and_grads(model, guide, *args, **kwargs):
        value = loss(model, guide, *args, **kwargs)
        if getattr(value, "requires_grad", False):
            value.backward(retain_graph=True)
        return value

    return loss_and_grads


def _as_float(value) -> float | tuple:
    if isinstance(value, tuple):
        return type(value)(map(_as_float, value))
    return value.item() if torch.is_tensor(value) else float(value)


class SVI(TracePosterior):
    """Stochastic variational inference (``pyro.infer.SVI``'s contract).

    :param model: callable with Pyro primitives.
    :param guide: callable with Pyro primitives (or an autoguide).
    :param optim: a ``pyro.optim.PyroOptim`` (``ValueError`` otherwise).
    :param loss: an ELBO instance (this package's or anything with ``loss`` and
        ``loss_and_grads``), or a callable ``loss(model, guide, *args, **kwargs)``.
    :param loss_and_grads: for a callable ``loss``: its gradient step; by default
        ``loss(...).backward()``.
    :param int num_samples: traces :meth:`run` collects after training.
    :param int num_steps: steps :meth:`run` takes before collecting.

    :meth:`step` is transactional: if the model, guide or loss raises (including
    :class:`~pyro_svi_ext.errors.NonFiniteLossError` under pyro validation), params
    first created during that step are removed from the param store, and no param
    value or optimizer state is changed.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        optim: pyro.optim.PyroOptim,
        loss,
        loss_and_grads: Callable | None = None,
        num_samples: int = 10,
        num_steps: int = 0,
        **kwargs,
    ):
        if not isinstance(optim, pyro.optim.PyroOptim):
            raise ValueError(
                f"optim must be a pyro.optim.PyroOptim (e.g. pyro.optim.Adam({{'lr': 1e-2}})), "
                f"got {type(optim).__name__}"
            )
        super().__init__(**kwargs)
        self.model = model
        self.guide = guide
        self.optim = optim
        self.num_samples = num_samples
        self.num_steps = num_steps
        self._optim_step = FusedStep(optim)
        # this package's estimators give their stepper (eager, or a compiled step that may
        # include the optimizer's update); a subclass that overrides the public
        # loss_and_grads gets that method called instead, as in Pyro
        self._stepper = (loss.stepper(model, guide)
                         if isinstance(loss, ELBO)
                         and type(loss).loss_and_grads is ELBO.loss_and_grads else None)
        if hasattr(loss, "loss") and hasattr(loss, "loss_and_grads"):
            self.loss = loss.loss
            self.loss_and_grads = loss.loss_and_grads
        elif callable(loss):
            self.loss = loss
            self.loss_and_grads = loss_and_grads or _custom_loss_and_grads(loss)
        else:
            raise ValueError(
                f"loss must be an ELBO or a callable loss(model, guide, ...), got {loss!r}"
            )

    def _run_loss_and_grads(self, args: tuple, kwargs: dict):
        if self._stepper is not None:
            result = self._stepper.loss_and_params(args, kwargs)
            return result.loss, result.params
        recorder = SiteRecorder(params_only=True)
        with recorder:
            loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        return loss, recorder.params

    def step(self, *args, **kwargs) -> float:
        """One gradient step; returns the loss estimate (float) before the step."""
        if self._stepper is not None:
            value = self._stepper.whole_step(self.optim, args, kwargs)
            if value is not None:
                return value
        return self._eager_step(args, kwargs)

    def _eager_step(self, args: tuple, kwargs: dict) -> float:
        """Loss and gradients (eager or a compiled graph), then the optimizer's step."""
        store = pyro.get_param_store()
        names_before = set(store.keys())
        try:
            loss, params = self._run_loss_and_grads(args, kwargs)
        except BaseException:
            for name in set(store.keys()) - names_before:
                del store[name]
            raise
        # one update per tensor, also when a tensor has two param-store names (one
        # network registered by pyro.module under two names), as in Pyro
        tensors = list({id(p): p for p in params.values()}.values())
        try:
            self._optim_step(tensors)
        finally:
            grads = [p.grad for p in tensors if p.grad is not None]
            if grads:
                torch._foreach_zero_(grads)
        return _as_float(loss)

    def step_tensor(self, *args, **kwargs) -> torch.Tensor:
        """Like :meth:`step`, but the loss comes back as a 0-dim tensor. When the
        estimator compiles the whole step (``Jit*`` estimators with a supported
        optimizer), the loss is not read on the host, so a CUDA step is queued without
        waiting for the device; the non-finite check is then yours (a step whose loss
        is not finite changes no param or optimizer tensor). Otherwise this is
        ``torch.tensor(step(...))``."""
        if self._stepper is not None:
            value = self._stepper.whole_step(self.optim, args, kwargs, lazy=True)
            if value is not None:
                return value
        return torch.tensor(self._eager_step(args, kwargs))

    def evaluate_loss(self, *args, **kwargs) -> float:
        """The loss estimate without gradients (float)."""
        with torch.no_grad():
            return _as_float(self.loss(self.model, self.guide, *args, **kwargs))

    def run(self, *args, **kwargs) -> SVI:
        """Take ``num_steps`` steps, then collect ``num_samples`` posterior traces."""
        for _ in range(self.num_steps):
            self.step(*args, **kwargs)
        return super().run(*args, **kwargs)

    def _traces(self, *args, **kwargs) -> Iterator:
        for _ in range(self.num_samples):
            yield posterior_trace(self.model, self.guide, args, kwargs), 0.0
