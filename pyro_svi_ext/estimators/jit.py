"""JitTrace_ELBO, JitTraceGraph_ELBO, JitTraceEnum_ELBO: the estimators with a compiled
``loss_and_grads`` (see :mod:`pyro_svi_ext.compile`)."""

from __future__ import annotations

from pyro_svi_ext.compile import CompiledLossAndGrads
from pyro_svi_ext.estimators.base import INF
from pyro_svi_ext.estimators.renyi_elbo import RenyiELBO
from pyro_svi_ext.estimators.trace_elbo import Trace_ELBO
from pyro_svi_ext.estimators.traceenum_elbo import TraceEnum_ELBO
from pyro_svi_ext.estimators.tracegraph_elbo import TraceGraph_ELBO

DEFAULT_BACKEND = "auto"


class _Compiled:
    """Compiles ``loss_and_grads`` after a first eager call, per (model, guide).

    Restrictions, as Pyro documents them for its Jit* estimators: static model
    structure; tensor inputs through ``*args``; non-tensor inputs through ``**kwargs``
    (part of the compiled graph's key). A change of param or argument shapes, dtypes or
    devices recompiles (up to ``cache_size`` graphs) or raises
    :class:`~pyro_svi_ext.compile.StructureChangedError` (``on_change="raise"``). A model
    that cannot be traced (e.g. it branches on tensor values, or the step writes the
    param store, as decaying-average baselines do) runs eagerly with one
    ``RuntimeWarning``, or raises with ``on_dynamic="raise"``. Validation (pyro's checks)
    runs on the first, eager call only; a non-finite loss is still caught.

    :param backend: ``"auto"`` (default: the first of ``"inductor"``, ``"jit"`` and
        ``"eager"`` that compiles the step and reproduces the traced graph's numbers;
        a backend that fails is dropped with a ``RuntimeWarning``), or one by name:
        ``"inductor"`` (torch.compile's compiler, fused C++/Triton kernels), ``"jit"``
        (TorchScript, legacy), ``"eager"`` (replay of the traced graph), or a plugin's.
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting: float = INF,
                 max_iarange_nesting: float | None = None, vectorize_particles: bool = False,
                 strict_enumeration_warning: bool = True, ignore_jit_warnings: bool = False,
                 jit_options: dict | None = None, retain_graph: bool | None = None,
                 tail_adaptive_beta: float = -1.0, *, backend: str | None = None,
                 on_change: str = "recompile", on_dynamic: str = "eager",
                 cache_size: int = 8):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         max_iarange_nesting=max_iarange_nesting,
                         vectorize_particles=vectorize_particles,
                         strict_enumeration_warning=strict_enumeration_warning,
                         ignore_jit_warnings=ignore_jit_warnings, jit_options=jit_options,
                         retain_graph=retain_graph, tail_adaptive_beta=tail_adaptive_beta)
        self._set_compile_options(backend, on_change, on_dynamic, cache_size)

    def _set_compile_options(self, backend, on_change, on_dynamic, cache_size) -> None:
        self.backend = backend or DEFAULT_BACKEND
        self._options = {"on_change": on_change, "on_dynamic": on_dynamic,
                         "cache_size": cache_size, "jit_options": self.jit_options,
                         "ignore_warnings": self.ignore_jit_warnings}
        self._steps: dict = {}
        CompiledLossAndGrads(self, None, self.backend, **self._options)  # validate options

    def _loss_and_grads(self, model, guide, args, kwargs):
        if self._pyro_hooks:  # a subclass computing through Pyro's hooks: eagerly
            return super()._loss_and_grads(model, guide, args, kwargs)
        key = (id(model), id(guide))
        step = self._steps.get(key)
        if step is None:
            eager = super()._loss_and_grads
            step = self._steps[key] = CompiledLossAndGrads(self, eager, self.backend,
                                                           **self._options)
        return step(model, guide, args, kwargs)

    def _svi_step(self, model, guide, optim, args, kwargs, lazy: bool = False):
        """A whole compiled SVI step (see
        :meth:`~pyro_svi_ext.compile.CompiledLossAndGrads.svi_step`); None when the step
        must run the eager way."""
        step = self._steps.get((id(model), id(guide)))
        return None if step is None else step.svi_step(model, guide, optim, args, kwargs,
                                                       lazy)

    def loss_and_surrogate_loss(self, model, guide, *args, **kwargs):
        """``(loss, surrogate_loss)`` as tensors: the negative ELBO and the negative
        surrogate whose gradient is the estimator's (Pyro's ``JitTrace_ELBO`` method;
        computed by the eager estimator here)."""
        loss, surrogate = self._objective(model, guide, args, kwargs)
        return loss, -surrogate


class JitTrace_ELBO(_Compiled, Trace_ELBO):
    """:class:`Trace_ELBO` with a compiled ``loss_and_grads``."""

    estimator_name = "JitTrace_ELBO"


class JitTraceGraph_ELBO(_Compiled, TraceGraph_ELBO):
    """:class:`TraceGraph_ELBO` with a compiled ``loss_and_grads``."""

    estimator_name = "JitTraceGraph_ELBO"


class JitTraceEnum_ELBO(_Compiled, TraceEnum_ELBO):
    """:class:`TraceEnum_ELBO` with a compiled ``loss_and_grads``."""

    estimator_name = "JitTraceEnum_ELBO"


class JitRenyiELBO(_Compiled, RenyiELBO):
    """:class:`RenyiELBO` with a compiled step: not part of Pyro's API (Pyro has no
    compiled Renyi bound); same arguments as ``RenyiELBO`` plus the compile options of
    the other ``Jit*`` estimators."""

    estimator_name = "JitRenyiELBO"

    def __init__(self, alpha: float = 0, num_particles: int = 2,
                 max_plate_nesting: float = INF, max_iarange_nesting: float | None = None,
                 vectorize_particles: bool = False, strict_enumeration_warning: bool = True,
                 *, backend: str | None = None, on_change: str = "recompile",
                 on_dynamic: str = "eager", cache_size: int = 8):
        RenyiELBO.__init__(self, alpha=alpha, num_particles=num_particles,
                           max_plate_nesting=max_plate_nesting,
                           max_iarange_nesting=max_iarange_nesting,
                           vectorize_particles=vectorize_particles,
                           strict_enumeration_warning=strict_enumeration_warning)
        self._set_compile_options(backend, on_change, on_dynamic, cache_size)
