"""ELBO estimators: trace layer + kernels, one file each."""

from pyro_svi_ext.estimators.base import ELBO, ELBOModule
from pyro_svi_ext.estimators.renyi_elbo import RenyiELBO
from pyro_svi_ext.estimators.trace_elbo import Trace_ELBO
from pyro_svi_ext.estimators.traceenum_elbo import TraceEnum_ELBO
from pyro_svi_ext.estimators.tracegraph_elbo import TraceGraph_ELBO

__all__ = ["ELBO", "ELBOModule", "RenyiELBO", "TraceEnum_ELBO", "TraceGraph_ELBO", "Trace_ELBO"]
