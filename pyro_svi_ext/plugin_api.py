"""What plugins see and what the registry holds: capabilities, registrations, the
registrars handed to each plugin's hooks, and the registry's errors.

Below :mod:`pyro_svi_ext.registry` (which loads the plugins) and
:mod:`pyro_svi_ext.hookspecs`, so the built-in plugin and third-party plugins import
from here without reaching the plugin manager.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field

from pyro_svi_ext.compile.backends import BUILTIN_BACKENDS, Backend
from pyro_svi_ext.protocol import Estimator

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
    """No estimator is registered under the name; ``matches`` lists close names and
    ``failed`` the plugins that failed to load (one of them may have held the name)."""

    def __init__(self, name: str, matches: list[str], known: list[str],
                 failed: list[str] = ()):
        self.name = name
        self.matches = matches
        self.failed = list(failed)
        hint = f"; did you mean {', '.join(matches)}?" if matches else ""
        lost = (f"; plugins that failed to load: {', '.join(failed)} (see "
                "pyro_svi_ext.registry.load_errors())") if failed else ""
        super().__init__(f"no estimator named {name!r}{hint} (registered: "
                         f"{', '.join(known)}){lost}")

    def __str__(self) -> str:
        return str(self.args[0])


class DuplicateEstimatorError(ValueError):
    """Two registrations claim one name; the message names both plugins."""


class PluginLoadError(RuntimeError):
    """A plugin failed to import or to register; ``plugin`` names it, ``__cause__`` says why,
    ``source`` is its code (module or hook function) when known."""

    def __init__(self, plugin: str, cause: BaseException, source: object = None):
        self.plugin = plugin
        self.source = source
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
        """The registration for ``name``; :class:`UnknownEstimatorError` if none,
        ``TypeError`` if ``name`` is not a string."""
        if not isinstance(name, str):
            raise TypeError(f"the estimator name must be a str, got {type(name).__name__} "
                            f"{name!r}")
        registration = self._by_key.get(normalize(name))
        if registration is None:
            keys = difflib.get_close_matches(normalize(name), list(self._by_key), n=3,
                                             cutoff=0.6)
            matches = list(dict.fromkeys(self._by_key[k].name for k in keys))
            raise UnknownEstimatorError(name, matches, [r.name for r in self._registrations],
                                        [e.plugin for e in self.load_errors])
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

        ``TypeError`` if ``cls`` is not an estimator class (a subclass of
        ``pyro_svi_ext.ELBO``, or of :class:`~pyro_svi_ext.protocol.Estimator`);
        ``DuplicateEstimatorError`` if the name or an alias is taken. A third-party
        class's ``capabilities`` are enforced when it runs: a model they exclude (a
        non-reparameterized guide site without ``nonreparam``, an enumerated site
        without ``enumeration``) is a ``ValueError`` naming the site.
        """
        if not (isinstance(cls, type) and issubclass(cls, Estimator)):
            raise TypeError(f"plugin {self.plugin!r} registers {cls!r}, which is not an "
                            "estimator: subclass pyro_svi_ext.ELBO (or implement "
                            "pyro_svi_ext.protocol.Estimator)")
        if capabilities is not None and self.plugin != BUILTIN_PLUGIN:
            cls.declared_capabilities = capabilities
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
        key = name.lower()
        if key in BUILTIN_BACKENDS or key in self._registry.backends or key in self.staged:
            raise DuplicateEstimatorError(f"compile backend {name!r} from plugin "
                                          f"{self.plugin!r} is already registered")
        self.staged[key] = Backend(key, compile, description)
