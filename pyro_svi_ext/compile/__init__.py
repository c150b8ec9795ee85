"""Compiled SVI steps: a model/guide pair's loss and gradients traced once into a flat
graph (``make_fx``) and handed to a backend (eager replay, TorchScript, inductor).

Work in progress (issue "Compiled SVI steps"): the optimizer update still runs eagerly
after the compiled graph.
"""

from pyro_svi_ext.compile.backends import BACKENDS, Backend, get_backend
from pyro_svi_ext.compile.step import CompiledLossAndGrads, StructureChangedError

__all__ = ["BACKENDS", "Backend", "CompiledLossAndGrads", "StructureChangedError",
           "get_backend"]
