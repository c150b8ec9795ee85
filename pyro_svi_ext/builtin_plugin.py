"""The package's own estimators, registered through the same hook as third-party ones."""

from __future__ import annotations

from pyro_svi_ext.estimators import RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO
from pyro_svi_ext.estimators.jit import (
    JitRenyiELBO,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceGraph_ELBO,
)
from pyro_svi_ext.hookspecs import hookimpl
from pyro_svi_ext.plugin_api import Capabilities, PluginRegistrar


@hookimpl
def pyro_svi_ext_register_estimators(registry: PluginRegistrar) -> None:
    registry.add(
        Trace_ELBO,
        aliases=("trace_elbo",),
        capabilities=Capabilities(reparam=True, nonreparam=True),
    )
    registry.add(
        TraceGraph_ELBO,
        aliases=("tracegraph_elbo", "trace_graph_elbo"),
        capabilities=Capabilities(reparam=True, nonreparam=True),
    )
    registry.add(
        RenyiELBO,
        aliases=("renyi_elbo", "renyi", "iwae"),
        capabilities=Capabilities(reparam=True, nonreparam=True),
    )
    registry.add(
        TraceEnum_ELBO,
        aliases=("traceenum_elbo", "trace_enum_elbo"),
        capabilities=Capabilities(reparam=True, nonreparam=True, enumeration=True),
    )
    for cls, base_caps in ((JitTrace_ELBO, {}), (JitTraceGraph_ELBO, {}),
                           (JitTraceEnum_ELBO, {"enumeration": True}), (JitRenyiELBO, {})):
        registry.add(cls, aliases=(cls.__name__.lower(),),
                     capabilities=Capabilities(compiled=True, **base_caps))
