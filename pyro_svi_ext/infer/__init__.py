"""Inference drivers: SVI and posteriors built from traces."""

from pyro_svi_ext.infer.svi import SVI
from pyro_svi_ext.infer.trace_posterior import TracePosterior

__all__ = ["SVI", "TracePosterior"]
