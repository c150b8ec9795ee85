"""Compiled SVI steps: a model/guide pair's loss, gradients and (with a supported
optimizer) the optimizer's update traced once into a flat graph (``make_fx``) and handed
to a backend (eager replay, TorchScript, inductor)."""

from pyro_svi_ext.compile.backends import BACKENDS, Backend, get_backend
from pyro_svi_ext.compile.optim_plan import OptimPlan, unsupported_reason
from pyro_svi_ext.compile.step import CompiledLossAndGrads, StructureChangedError

__all__ = ["BACKENDS", "Backend", "CompiledLossAndGrads", "OptimPlan", "StructureChangedError",
           "get_backend", "unsupported_reason"]
