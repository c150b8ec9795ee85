"""Hook specifications of the ``pyro_svi_ext`` plugin system (pluggy).

A plugin is a module or object with functions decorated by :data:`pyro_svi_ext.hookimpl`
whose names match the specs below. Third-party packages expose theirs through the
entry-point group ``pyro_svi_ext``; the built-in estimators use the same hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pyro_svi_ext.plugin_api import BackendRegistrar, PluginRegistrar

PROJECT = "pyro_svi_ext"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def pyro_svi_ext_register_estimators(registry: PluginRegistrar) -> None:
    """Add estimators to ``registry`` with ``registry.add(cls, name=..., aliases=...,
    capabilities=...)``.

    Called once per plugin when the plugin manager is built (first lookup, or
    :func:`pyro_svi_ext.registry.reload`). Returns nothing. If it raises, none of this
    plugin's registrations are kept and the error is reported naming the plugin; the
    other plugins still load.
    """


@hookspec
def pyro_svi_ext_register_backends(registry: BackendRegistrar) -> None:
    """Add compile backends with ``registry.add(name, compile, description="")``, where
    ``compile(graph_module, example_inputs)`` returns a callable with the graph
    module's signature.

    Called once per plugin when the registry is built. Returns nothing. Errors are
    handled as for :func:`pyro_svi_ext_register_estimators`.
    """
