"""Inference drivers: SVI and posteriors built from traces."""

from pyro_svi_ext.infer.distributed import DistributedSVI
from pyro_svi_ext.infer.fit import Convergence, LossHistory
from pyro_svi_ext.infer.importance import Importance
from pyro_svi_ext.infer.marginal import EmpiricalMarginal
from pyro_svi_ext.infer.predictive import TracePredictive
from pyro_svi_ext.infer.svi import SVI
from pyro_svi_ext.infer.trace_posterior import EmptyPosteriorError, Marginals, TracePosterior

__all__ = [
    "SVI",
    "Convergence",
    "DistributedSVI",
    "EmpiricalMarginal",
    "EmptyPosteriorError",
    "Importance",
    "LossHistory",
    "Marginals",
    "TracePosterior",
    "TracePredictive",
]
