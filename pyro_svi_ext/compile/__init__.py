"""Compiled SVI steps: a model/guide pair's loss, gradients and (with a supported
optimizer) the optimizer's update recorded once into a flat graph (``record.py``) and handed
to a backend (eager replay, TorchScript, inductor).

``step.py`` runs a step (:class:`CompiledStep`); ``layout.py`` places its inputs and
outputs; ``guard.py`` keys and caches graphs; ``verify.py`` checks a new graph;
``tracing.py`` binds the param store and modules to the graph's inputs; ``optim_plan.py``
lays out the optimizer's state; ``backends.py`` and ``matmul_choices.py`` compile.
"""

from pyro_svi_ext.compile.backends import BACKENDS, Backend, get_backend
from pyro_svi_ext.compile.optim_plan import OptimPlan, unsupported_reason
from pyro_svi_ext.compile.step import CompiledStep, StructureChangedError

__all__ = ["BACKENDS", "Backend", "CompiledStep", "OptimPlan", "StructureChangedError",
           "get_backend", "unsupported_reason"]
