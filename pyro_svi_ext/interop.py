"""Make Pyro's own type checks accept this package's classes.

``pyro.infer.ELBO`` and ``pyro.infer.abstract_infer.TracePosterior`` are ABCs, so the
package's classes are registered as *virtual* subclasses. ``import pyro`` has already
loaded ``pyro.infer``; the classes are read from ``sys.modules`` rather than imported,
so nothing of Pyro's inference code runs on our behalf.
"""

from __future__ import annotations

import sys
from abc import ABCMeta


def _pyro_class(module: str, name: str):
    cls = getattr(sys.modules.get(module), name, None)
    return cls if isinstance(cls, ABCMeta) else None


def register_virtual_subclasses() -> None:
    """Register ELBO and TracePosterior with Pyro's ABCs (no-op when Pyro lacks them)."""
    from pyro_svi_ext.estimators import ELBO
    from pyro_svi_ext.infer import TracePosterior

    for module, name, ours in (
        ("pyro.infer.elbo", "ELBO", ELBO),
        ("pyro.infer.abstract_infer", "TracePosterior", TracePosterior),
    ):
        theirs = _pyro_class(module, name)
        if theirs is not None:
            theirs.register(ours)
