"""ELBO estimators: trace layer + kernels, one file each."""

from pyro_svi_ext.estimators.base import ELBO, ELBOModule
from pyro_svi_ext.estimators.trace_elbo import Trace_ELBO

__all__ = ["ELBO", "ELBOModule", "Trace_ELBO"]
