"""The drop-in contract, computed from the installed Pyro: for each class the plugin
stands in for, Pyro's constructor parameters (names, defaults, positions), its public
methods and attributes, and the protected hooks subclasses in the wild override, must
all be the plugin's too.

``conformance()`` returns one row per class; a row whose ``missing`` lists are empty
conforms. It runs in every cell of the matrix (the worker adds it to its output) and
in the test suite for the installed Pyro.
"""

from __future__ import annotations

import inspect

import pyro_svi_ext
from pyro_svi_ext.dropin import PYRO_CLASSES
from pyro_svi_ext.estimators.pyro_hooks import PYRO_HOOKS

#: instances to compare attribute by attribute (classes that need no model run)
_ESTIMATORS = ("ELBO", "Trace_ELBO", "JitTrace_ELBO", "TraceGraph_ELBO",
               "JitTraceGraph_ELBO", "TraceEnum_ELBO", "JitTraceEnum_ELBO", "RenyiELBO")
#: Pyro's protected helpers that code outside ``pyro.infer`` calls on an estimator
_HELPERS = ("_guess_max_plate_nesting", "_vectorized_num_particles")


def _parameters(cls: type) -> list[inspect.Parameter]:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _signature_gaps(theirs: type, ours: type) -> list[str]:
    """Pyro's parameters that ours lacks, has with another default, or takes at
    another position."""
    mine = {p.name: (i, p) for i, p in enumerate(_parameters(ours))}
    gaps = []
    for i, p in enumerate(_parameters(theirs)):
        if p.name not in mine:
            gaps.append(f"parameter {p.name}")
            continue
        j, q = mine[p.name]
        if p.default is not p.empty and not _same_default(p.default, q.default):
            gaps.append(f"default of {p.name}: Pyro {p.default!r}, ours {q.default!r}")
        positional = (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        if p.kind in positional and (q.kind not in positional or i != j):
            gaps.append(f"position of {p.name}: Pyro {i}, ours {j}")
    return gaps


def _same_default(a, b) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # defaults that cannot be compared
        return a is b


def _instance_members(cls: type, name: str) -> set[str]:
    if name not in _ESTIMATORS or inspect.isabstract(cls):
        return set()
    return {k for k in vars(cls()) if not k.startswith("_")}


def conformance(known_differences: dict[str, dict[str, str]] | None = None) -> list[dict]:
    """One row per class: ``{"class", "missing", "documented"}``; ``missing`` lists what
    Pyro has and the plugin lacks (not excused by ``known_differences``, a map of class
    name to {gap: reason}); ``documented`` lists the excused gaps with their reasons."""
    known = DOCUMENTED if known_differences is None else known_differences
    rows = []
    for name, theirs in PYRO_CLASSES.items():
        ours = getattr(pyro_svi_ext, name)
        gaps = _signature_gaps(theirs, ours)
        public = {a for a in dir(theirs) if not a.startswith("_")}
        gaps += [f"member {a}" for a in sorted(public - set(dir(ours)))]
        hooks = [h for h in (*PYRO_HOOKS, *_HELPERS) if hasattr(theirs, h)]
        gaps += [f"hook {h}" for h in hooks if not hasattr(ours, h)]
        attrs = _instance_members(theirs, name) - _instance_members(ours, name)
        gaps += [f"attribute {a}" for a in sorted(attrs)]
        excused = known.get(name, {})
        rows.append({"class": name,
                     "missing": [g for g in gaps if g not in excused],
                     "documented": {g: excused[g] for g in gaps if g in excused}})
    return rows


#: deliberate differences, each with its reason (kept short: the README says more)
DOCUMENTED: dict[str, dict[str, str]] = {
    "SVI": {"default of num_samples: Pyro 0, ours 10":
            "the documented API's default (Pyro 1.9 deprecated the argument)"},
}


if __name__ == "__main__":  # pragma: no cover
    for row in conformance():
        print(row)
