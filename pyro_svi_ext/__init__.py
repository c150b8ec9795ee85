"""pyro_svi_ext: Pyro's variational inference API as the package's own, pluggable,
compiled estimators running over Pyro's trace layer.

>>> import pyro_svi_ext
>>> pyro_svi_ext.get("trace_elbo").__name__
'Trace_ELBO'
"""

import pyro  # noqa: F401  (loads pyro.infer, whose ABCs we register with)

from pyro_svi_ext import registry
from pyro_svi_ext.dropin import install, installed, uninstall
from pyro_svi_ext.errors import (
    CheckpointError,
    CheckpointMismatchError,
    DistributedStepError,
    NonFiniteLossError,
    NonFiniteLossWarning,
)
from pyro_svi_ext.estimators import (
    ELBO,
    ELBOModule,
    RenyiELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
)
from pyro_svi_ext.estimators.jit import (
    JitRenyiELBO,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceGraph_ELBO,
)
from pyro_svi_ext.hookspecs import hookimpl
from pyro_svi_ext.infer import (
    SVI,
    Convergence,
    DistributedSVI,
    EmpiricalMarginal,
    EmptyPosteriorError,
    Importance,
    LossHistory,
    TracePosterior,
    TracePredictive,
)
from pyro_svi_ext.interop import register_virtual_subclasses
from pyro_svi_ext.registry import Capabilities, available, get, make
from pyro_svi_ext.trace.backward_sample import BackwardSampleMessenger

register_virtual_subclasses()

__version__ = "0.1.0"

__all__ = [
    "ELBO",
    "SVI",
    "BackwardSampleMessenger",
    "Capabilities",
    "CheckpointError",
    "CheckpointMismatchError",
    "Convergence",
    "DistributedSVI",
    "DistributedStepError",
    "ELBOModule",
    "EmpiricalMarginal",
    "EmptyPosteriorError",
    "Importance",
    "JitRenyiELBO",
    "JitTraceEnum_ELBO",
    "JitTraceGraph_ELBO",
    "JitTrace_ELBO",
    "LossHistory",
    "NonFiniteLossError",
    "NonFiniteLossWarning",
    "RenyiELBO",
    "TraceEnum_ELBO",
    "TraceGraph_ELBO",
    "TracePosterior",
    "TracePredictive",
    "Trace_ELBO",
    "available",
    "get",
    "hookimpl",
    "install",
    "installed",
    "make",
    "registry",
    "uninstall",
]
