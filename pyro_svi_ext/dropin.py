"""The drop-in switch: Pyro's inference names bound to this package's classes.

After :func:`install`, ``pyro.infer.SVI``, ``pyro.infer.Trace_ELBO`` and the other names
of the documented API (and the same attributes of the submodules that define them, e.g.
``pyro.infer.trace_elbo.Trace_ELBO``) are this package's classes, so an unchanged Pyro
program that imports them afterwards runs on the plugin. :func:`uninstall` puts Pyro's
classes back; :func:`installed` does both around a block.

This module (with ``pytest_plugin``) is the one place the package imports
``pyro.infer``: only to rebind its names.

What is not rebound: classes already *defined* as subclasses of Pyro's (e.g. Pyro's
``TraceMeanField_ELBO``) keep Pyro's base, and a module of the user's that imported a
name before :func:`install` keeps what it imported. Other ``pyro.*`` modules that hold
one of the rebound estimator or inference classes as a module attribute (e.g.
``pyro.contrib.cevae.SVI`` if it was imported first) are rebound too; the base classes
``ELBO`` and ``TracePosterior`` only in ``pyro.infer`` and their defining modules.

>>> import pyro.infer
>>> import pyro_svi_ext
>>> with pyro_svi_ext.dropin.installed():
...     pyro.infer.Trace_ELBO is pyro_svi_ext.Trace_ELBO
True
>>> pyro.infer.Trace_ELBO is pyro_svi_ext.Trace_ELBO
False
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pyro.infer  # noqa: F401  (the names this switch rebinds)

#: each rebound name and the modules that define or re-export it
REBOUND: dict[str, tuple[str, ...]] = {
    "SVI": ("pyro.infer", "pyro.infer.svi"),
    "ELBO": ("pyro.infer", "pyro.infer.elbo"),
    "Trace_ELBO": ("pyro.infer", "pyro.infer.trace_elbo"),
    "JitTrace_ELBO": ("pyro.infer", "pyro.infer.trace_elbo"),
    "TraceGraph_ELBO": ("pyro.infer", "pyro.infer.tracegraph_elbo"),
    "JitTraceGraph_ELBO": ("pyro.infer", "pyro.infer.tracegraph_elbo"),
    "TraceEnum_ELBO": ("pyro.infer", "pyro.infer.traceenum_elbo"),
    "JitTraceEnum_ELBO": ("pyro.infer", "pyro.infer.traceenum_elbo"),
    "BackwardSampleMessenger": ("pyro.infer.traceenum_elbo",),
    "RenyiELBO": ("pyro.infer", "pyro.infer.renyi_elbo"),
    "Importance": ("pyro.infer", "pyro.infer.importance"),
    "EmpiricalMarginal": ("pyro.infer", "pyro.infer.abstract_infer"),
    "TracePosterior": ("pyro.infer", "pyro.infer.abstract_infer"),
    "TracePredictive": ("pyro.infer", "pyro.infer.abstract_infer"),
}

#: base classes rebound only where ``REBOUND`` lists them: elsewhere in Pyro they are
#: the base of Pyro's own estimators (e.g. ``EnergyDistance`` calls
#: ``ELBO._guess_max_plate_nesting``), which keep Pyro's base
BASES = ("ELBO", "TracePosterior")

#: (module, attribute, Pyro's object) for every binding changed by :func:`install`
_SAVED: list[tuple[object, str, object]] = []


def _ours(compile: bool = False) -> dict[str, type]:
    import pyro_svi_ext
    from pyro_svi_ext.estimators.jit import COMPILED_FOR

    ours = {name: getattr(pyro_svi_ext, name) for name in REBOUND}
    if compile:
        ours.update(COMPILED_FOR)
    return ours


#: Pyro's own class for each rebound name (read before any install)
PYRO_CLASSES: dict[str, type] = {name: getattr(importlib.import_module(mods[-1]), name)
                                 for name, mods in REBOUND.items()}


_MODE: list[bool] = [False]  # whether the installed switch compiles


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    return bool(_SAVED)


def install(compile: bool = False) -> None:
    """Rebind ``pyro.infer``'s names to this package's classes (idempotent).

    ``compile=True`` also binds Pyro's eager estimator names (``Trace_ELBO``,
    ``TraceGraph_ELBO``, ``TraceEnum_ELBO``, ``RenyiELBO``) to compiled steps: eager
    on the first step and while the graph compiles in the background, compiled from
    then on, and eager for good with one log line where a model cannot compile. Their
    constructors take the eager class's arguments (and the ``Jit*`` compile options);
    ``isinstance(elbo, pyro.infer.Trace_ELBO)`` still holds."""
    if _SAVED and _MODE[0] == compile:
        return
    uninstall()
    _MODE[0] = compile
    ours = _ours(compile)
    theirs = PYRO_CLASSES
    by_identity = {id(cls): name for name, cls in theirs.items()}
    targets = {mod for mods in REBOUND.values() for mod in mods}
    for modname, module in list(sys.modules.items()):
        if module is None or not (modname in targets or modname.startswith("pyro.")):
            continue
        for attr, value in list(vars(module).items()):
            name = by_identity.get(id(value))
            if name is None or value is not theirs[name]:
                continue
            if name in BASES and modname not in REBOUND[name]:
                continue
            _SAVED.append((module, attr, value))
            setattr(module, attr, ours[name])


def uninstall() -> None:
    """Put Pyro's classes back where :func:`install` rebound them (idempotent)."""
    while _SAVED:
        module, attr, value = _SAVED.pop()
        setattr(module, attr, value)


@contextmanager
def installed(compile: bool = False) -> Iterator[None]:
    """:func:`install` for the duration of a ``with`` block (nesting is allowed: only
    the outermost block uninstalls; an inner block in another mode restores the
    outer one)."""
    was, mode = is_installed(), _MODE[0]
    install(compile)
    try:
        yield
    finally:
        if not was:
            uninstall()
        elif mode != compile:
            install(mode)
