"""Full ``pyro.poutine.Trace`` objects for posteriors (what ``TracePosterior`` stores)."""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine


def posterior_trace(model: Callable, guide: Callable, args: tuple, kwargs: dict):
    """A model trace with latent values drawn from ``guide`` (a ``pyro.poutine.Trace``,
    so pyro's own utilities can read it)."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    return poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
