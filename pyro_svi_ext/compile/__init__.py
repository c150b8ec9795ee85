"""Compiled SVI steps: a model/guide pair's loss, gradients and (with a supported
optimizer) the optimizer's update recorded once into a flat graph (``record.py``) and handed
to a backend (eager replay, TorchScript, inductor).

``step.py`` runs a step (:class:`CompiledStep`), with its stages ``tracer.py`` (a new
graph), ``swap.py`` (compiling in the background) and ``sentinel.py`` (checks against
the eager step); ``report.py`` keeps what it did; ``layout.py`` places its inputs and
outputs; ``arguments.py`` and ``module_state.py`` turn the call's arguments and the
modules' state into inputs and key entries; ``guard.py`` keys and caches graphs;
``verify.py`` checks a new graph; ``tracing.py`` binds the param store and modules to
the graph's inputs; ``optim_plan.py`` lays out the optimizer's state; ``backends.py``
and ``matmul_choices.py`` compile.
"""

from pyro_svi_ext.compile.backends import BACKENDS, Backend, get_backend
from pyro_svi_ext.compile.optim_plan import OptimPlan, unsupported_reason
from pyro_svi_ext.compile.step import CompiledStep, StructureChangedError

__all__ = ["BACKENDS", "Backend", "CompiledStep", "OptimPlan", "StructureChangedError",
           "get_backend", "unsupported_reason"]
