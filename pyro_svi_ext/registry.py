"""Estimator registry on pluggy: look estimators up by name, list them, add plugins.

Public calls: :func:`get` (name -> class), :func:`make` (name -> instance),
:func:`available` (all registrations), :func:`reload` (re-scan plugins),
:func:`load_errors` (plugins that failed to load), :func:`get_plugin_manager`.

Names are matched case-insensitively, ``-`` and ``_`` alike: ``"Trace_ELBO"``,
``"trace_elbo"`` and ``"TRACE-ELBO"`` are one name.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

import pluggy

from pyro_svi_ext import builtin_plugin, hookspecs
from pyro_svi_ext.compile import backends as compile_backends
from pyro_svi_ext.plugin_api import (  # noqa: F401  (the registry's public names)
    BUILTIN_PLUGIN,
    BackendRegistrar,
    Capabilities,
    DuplicateEstimatorError,
    EstimatorRegistry,
    PluginLoadError,
    PluginLoadWarning,
    PluginRegistrar,
    Registration,
    UnknownEstimatorError,
    normalize,
)

ENTRY_POINT_GROUP = hookspecs.PROJECT
#: set to a non-empty value to skip loading third-party plugins from entry points
DISABLE_AUTOLOAD_ENV = "PYRO_SVI_EXT_DISABLE_PLUGIN_AUTOLOAD"


def _where(obj) -> tuple[str, int]:
    """``(file, line)`` of a plugin's function or module, for warnings that point at it."""
    code = getattr(obj, "__code__", None)
    if code is not None:
        return code.co_filename, code.co_firstlineno
    return getattr(obj, "__file__", None) or repr(obj), 1


def _warn_at(obj, message: str) -> None:
    """A :class:`PluginLoadWarning` attributed to the plugin's code, not the registry."""
    filename, lineno = _where(obj)
    warnings.warn_explicit(message, PluginLoadWarning, filename, lineno,
                           module=getattr(obj, "__module__", None) or "pyro_svi_ext.plugin")


def _unmarked_hooks(plugin) -> list[str]:
    """Functions of ``plugin`` named like a hook but not decorated with ``hookimpl``
    (pluggy ignores them: the plugin would silently do nothing)."""
    return [n for n in dir(plugin) if n.startswith(f"{hookspecs.PROJECT}_register")
            and callable(getattr(plugin, n))
            and not hasattr(getattr(plugin, n), f"{hookspecs.PROJECT}_impl")]


def _attempt(call, label: str, errors: list, source=None) -> tuple[bool, Any]:
    """``(True, call())``, or ``(False, None)`` with a :class:`PluginLoadError` in
    ``errors`` when the plugin's code raised. Any exception counts, ``SystemExit``
    included (a plugin module that calls ``sys.exit()`` or parses ``sys.argv`` with
    argparse at import must not end its host's process); ``KeyboardInterrupt`` is the
    user's and goes on."""
    try:
        return True, call()
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # a plugin's failure, reported
        errors.append(PluginLoadError(label, err, source))
        return False, None


def _register(pm: pluggy.PluginManager, plugin, label: str, errors: list) -> None:
    def register() -> None:
        pm.register(plugin, name=label)
        pm.check_pending()

    if not _attempt(register, label, errors, plugin)[0]:
        if pm.has_plugin(label):
            pm.unregister(name=label)
        return
    for name in _unmarked_hooks(plugin):
        _warn_at(getattr(plugin, name), f"plugin {label!r}: {name}() is not decorated with "
                 "@pyro_svi_ext.hookimpl, so it is never called")


def _entry_point_plugins(pm: pluggy.PluginManager) -> list[PluginLoadError]:
    errors: list = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        label = f"{ep.dist.name}:{ep.name}" if getattr(ep, "dist", None) else ep.name
        if pm.has_plugin(label):
            continue
        loaded, plugin = _attempt(ep.load, label, errors)
        if loaded:
            _register(pm, plugin, label, errors)
    return errors


def get_plugin_manager(
    load_entrypoints: bool | None = None, extra_plugins: Sequence[object] = ()
) -> tuple[pluggy.PluginManager, list]:
    """A new plugin manager with the built-ins, the ``pyro_svi_ext`` entry points (unless
    ``PYRO_SVI_EXT_DISABLE_PLUGIN_AUTOLOAD`` is set or ``load_entrypoints=False``) and
    ``extra_plugins`` (modules or objects with hook implementations, e.g. a plugin under
    development) registered.

    Returns ``(plugin_manager, load_errors)``; a misspelled hook in a plugin is a load
    error of that plugin (pluggy's ``check_pending``).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin_plugin, name=BUILTIN_PLUGIN)
    pm.check_pending()
    if load_entrypoints is None:
        load_entrypoints = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    errors = _entry_point_plugins(pm) if load_entrypoints else []
    for plugin in extra_plugins:
        label = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}@{id(plugin):x}"
        _register(pm, plugin, label, errors)
    return pm, errors


def build_registry(
    load_entrypoints: bool | None = None, extra_plugins: Sequence[object] = ()
) -> EstimatorRegistry:
    """Load every plugin into a new registry; failures warn (:class:`PluginLoadWarning`)
    and are kept in ``registry.load_errors``."""
    pm, errors = get_plugin_manager(load_entrypoints, extra_plugins)
    registry = EstimatorRegistry()
    for impl in pm.hook.pyro_svi_ext_register_estimators.get_hookimpls():
        registrar = PluginRegistrar(impl.plugin_name, registry)

        def add_estimators(impl=impl, registrar=registrar) -> None:
            impl.function(registry=registrar)
            for registration in registrar.staged:
                registry.add(registration)

        _attempt(add_estimators, impl.plugin_name, errors, impl.function)
    for impl in pm.hook.pyro_svi_ext_register_backends.get_hookimpls():
        backends = BackendRegistrar(impl.plugin_name, registry)

        def add_backends(impl=impl, backends=backends) -> None:
            impl.function(registry=backends)
            registry.backends.update(backends.staged)

        _attempt(add_backends, impl.plugin_name, errors, impl.function)
    for error in errors:
        _warn_at(error.source, str(error))
    registry.load_errors = errors
    return registry


_REGISTRY: EstimatorRegistry | None = None


def _registry() -> EstimatorRegistry:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry()
    return _REGISTRY


def reload(
    load_entrypoints: bool | None = None, extra_plugins: Sequence[object] = ()
) -> EstimatorRegistry:
    """Rebuild the registry: after installing a plugin at run time, or with
    ``extra_plugins`` to try a plugin that is not installed yet."""
    global _REGISTRY
    _REGISTRY = build_registry(load_entrypoints, extra_plugins)
    return _REGISTRY


def get(name: str) -> type:
    """The estimator class registered as ``name`` (:class:`UnknownEstimatorError` if none)."""
    return _registry().get(name).cls


def make(name: str, **kwargs: Any) -> Any:
    """An instance of the estimator registered as ``name``, built with ``kwargs``."""
    return get(name)(**kwargs)


def available() -> list[Registration]:
    """Every registration: name, class, aliases, capabilities, signature, plugin."""
    return _registry().registrations()


def backends() -> dict:
    """Compile backends added by plugins (name -> Backend); built-ins live in
    :data:`pyro_svi_ext.compile.backends.BUILTIN_BACKENDS`."""
    return dict(_registry().backends)


# compile/ looks backends up by name; those of plugins come from here (loaded on demand)
compile_backends.set_plugin_backends(backends)


def load_errors() -> list[PluginLoadError]:
    """The plugins that failed to load in the current registry."""
    return list(_registry().load_errors)
