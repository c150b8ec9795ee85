"""Estimator registry on pluggy: look estimators up by name, list them, add plugins.

Public calls: :func:`get` (name -> class), :func:`make` (name -> instance),
:func:`available` (all registrations), :func:`reload` (re-scan plugins),
:func:`load_errors` (plugins that failed to load), :func:`get_plugin_manager`.

Names are matched case-insensitively, ``-`` and ``_`` alike: ``"Trace_ELBO"``,
``"trace_elbo"`` and ``"TRACE-ELBO"`` are one name.
"""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from pyro_svi_ext import hookspecs

ENTRY_POINT_GROUP = hookspecs.PROJECT
#: set to a non-empty value to skip loading third-party plugins from entry points
DISABLE_AUTOLOAD_ENV = "PYRO_SVI_EXT_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PLUGIN = "pyro_svi_ext.builtin"


@dataclass(frozen=True)
class Capabilities:
    """What an estimator supports, for users choosing one."""

    reparam: bool = True
    nonreparam: bool = True
    enumeration: bool = False
    compiled: bool = False
    devices: tuple[str, ...] = ("cpu", "cuda")


@dataclass(frozen=True)
class Registration:
    """One registered estimator: its class, names, capabilities, signature and plugin."""

    name: str
    cls: type
    aliases: tuple[str, ...] = ()
    capabilities: Capabilities = field(default_factory=Capabilities)
    signature: str = ""
    plugin: str = BUILTIN_PLUGIN


class UnknownEstimatorError(KeyError):
    """No estimator is registered under the name; ``matches`` lists close names."""

    def __init__(self, name: str, matches: list[str], known: list[str]):
        self.name = name
        self.matches = matches
        hint = f"; did you mean {', '.join(matches)}?" if matches else ""
        super().__init__(f"no estimator named {name!r}{hint} (registered: {', '.join(known)})")

    def __str__(self) -> str:
        return str(self.args[0])


class DuplicateEstimatorError(ValueError):
    """Two registrations claim one name; the message names both plugins."""


class PluginLoadError(RuntimeError):
    """A plugin failed to import or to register; ``plugin`` names it, ``__cause__`` says why."""

    def __init__(self, plugin: str, cause: BaseException):
        self.plugin = plugin
        super().__init__(f"plugin {plugin!r} failed to load: {type(cause).__name__}: {cause}")
        self.__cause__ = cause


class PluginLoadWarning(UserWarning):
    """Emitted once per plugin that failed to load (the others are still available)."""


def normalize(name: str) -> str:
    """The lookup key of a name: lower case, ``-`` read as ``_``."""
    return name.strip().lower().replace("-", "_")


class EstimatorRegistry:
    """Registrations by canonical name and alias, plus the plugins that failed."""

    def __init__(self):
        self._by_key: dict[str, Registration] = {}
        self._registrations: list[Registration] = []
        self.load_errors: list[PluginLoadError] = []
        self.backends: dict[str, object] = {}

    def conflict(self, registration: Registration) -> Registration | None:
        """The existing registration that claims one of ``registration``'s names."""
        for name in (registration.name, *registration.aliases):
            existing = self._by_key.get(normalize(name))
            if existing is not None:
                return existing
        return None

    def add(self, registration: Registration) -> None:
        """Add a registration. ``DuplicateEstimatorError`` if a name is taken."""
        existing = self.conflict(registration)
        if existing is not None:
            raise DuplicateEstimatorError(
                f"estimator name {registration.name!r} (or an alias) from plugin "
                f"{registration.plugin!r} is already registered as {existing.name!r} by plugin "
                f"{existing.plugin!r}"
            )
        for name in (registration.name, *registration.aliases):
            self._by_key[normalize(name)] = registration
        self._registrations.append(registration)

    def get(self, name: str) -> Registration:
        """The registration for ``name``; :class:`UnknownEstimatorError` if none."""
        registration = self._by_key.get(normalize(name))
        if registration is None:
            keys = difflib.get_close_matches(normalize(name), list(self._by_key), n=3,
                                             cutoff=0.6)
            matches = list(dict.fromkeys(self._by_key[k].name for k in keys))
            raise UnknownEstimatorError(name, matches, [r.name for r in self._registrations])
        return registration

    def registrations(self) -> list[Registration]:
        """All registrations, in load order."""
        return list(self._registrations)


class PluginRegistrar:
    """What a plugin's hook receives: collects that plugin's registrations, which the
    registry keeps only if the hook returns without error."""

    def __init__(self, plugin: str, registry: EstimatorRegistry):
        self.plugin = plugin
        self._registry = registry
        self.staged: list[Registration] = []

    def add(
        self,
        cls: type,
        name: str | None = None,
        aliases: tuple[str, ...] | list[str] = (),
        capabilities: Capabilities | None = None,
    ) -> None:
        """Register estimator class ``cls`` under ``name`` (default ``cls.__name__``).

        ``DuplicateEstimatorError`` if the name or an alias is taken.
        """
        registration = Registration(
            name=name or cls.__name__,
            cls=cls,
            aliases=tuple(aliases),
            capabilities=capabilities or Capabilities(),
            signature=f"{name or cls.__name__}{inspect.signature(cls)}",
            plugin=self.plugin,
        )
        staging = EstimatorRegistry()
        for staged in self.staged:
            staging.add(staged)
        for registry in (self._registry, staging):
            existing = registry.conflict(registration)
            if existing is not None:
                registry.add(registration)  # raises, naming both plugins
        self.staged.append(registration)


class BackendRegistrar:
    """What a plugin's ``pyro_svi_ext_register_backends`` hook receives."""

    def __init__(self, plugin: str, registry: EstimatorRegistry):
        self.plugin = plugin
        self._registry = registry
        self.staged: dict[str, object] = {}

    def add(self, name: str, compile, description: str = "") -> None:
        """Register a compile backend; ``DuplicateEstimatorError`` if the name is taken."""
        from pyro_svi_ext.compile.backends import BACKENDS, Backend

        key = name.lower()
        if key in BACKENDS or key in self._registry.backends or key in self.staged:
            raise DuplicateEstimatorError(f"compile backend {name!r} from plugin "
                                          f"{self.plugin!r} is already registered")
        self.staged[key] = Backend(key, compile, description)


def _entry_point_plugins(pm: pluggy.PluginManager) -> list[PluginLoadError]:
    errors = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        label = f"{ep.dist.name}:{ep.name}" if getattr(ep, "dist", None) else ep.name
        if pm.has_plugin(label):
            continue
        try:
            pm.register(ep.load(), name=label)
            pm.check_pending()
        except Exception as err:
            if pm.has_plugin(label):
                pm.unregister(name=label)
            errors.append(PluginLoadError(label, err))
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
    from pyro_svi_ext import builtin_plugin

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin_plugin, name=BUILTIN_PLUGIN)
    pm.check_pending()
    if load_entrypoints is None:
        load_entrypoints = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    errors = _entry_point_plugins(pm) if load_entrypoints else []
    for plugin in extra_plugins:
        label = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}@{id(plugin):x}"
        try:
            pm.register(plugin, name=label)
            pm.check_pending()
        except Exception as err:
            if pm.has_plugin(label):
                pm.unregister(name=label)
            errors.append(PluginLoadError(label, err))
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
        try:
            impl.function(registry=registrar)
            for registration in registrar.staged:
                registry.add(registration)
        except Exception as err:
            errors.append(PluginLoadError(impl.plugin_name, err))
    for impl in pm.hook.pyro_svi_ext_register_backends.get_hookimpls():
        backends = BackendRegistrar(impl.plugin_name, registry)
        try:
            impl.function(registry=backends)
            registry.backends.update(backends.staged)
        except Exception as err:
            errors.append(PluginLoadError(impl.plugin_name, err))
    for error in errors:
        warnings.warn(str(error), PluginLoadWarning, stacklevel=3)
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
    :data:`pyro_svi_ext.compile.BACKENDS`."""
    return dict(_registry().backends)


def load_errors() -> list[PluginLoadError]:
    """The plugins that failed to load in the current registry."""
    return list(_registry().load_errors)
