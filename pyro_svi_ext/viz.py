"""Plots of a fit (needs matplotlib: ``pip install 'pyro-svi-ext[plots]'``).

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state, no display
needed) and written when a ``path`` is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pyro.poutine as poutine
import torch

from pyro_svi_ext.infer.fit import RUNNING_WINDOW
from pyro_svi_ext.infer.marginal import EmpiricalMarginal
from pyro_svi_ext.infer.trace_posterior import TracePosterior

#: panels per site at most (a site with more elements shows its first ones)
MAX_PANELS = 6


def _figure(rows: int, cols: int, width: float = 6.0, height: float = 3.5):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # the optional extra
        raise ImportError("plots need matplotlib: pip install 'pyro-svi-ext[plots]'") from err
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def smoothed(losses: Sequence[float], window: int = RUNNING_WINDOW) -> list[float]:
    """The running mean of ``losses`` over the last ``window`` steps (shorter at the
    start)."""
    out, total = [], 0.0
    for i, x in enumerate(losses):
        total += x
        if i >= window:
            total -= losses[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_losses(losses: Sequence[float], path: str | Path | None = None,
                window: int = RUNNING_WINDOW, title: str = "SVI loss"):
    """The loss of each step and its running mean over ``window`` steps; returns the
    figure, written to ``path`` if given (format from the suffix)."""
    fig, axes = _figure(1, 1)
    ax = axes[0, 0]
    steps = range(1, len(losses) + 1)
    ax.plot(steps, list(losses), lw=0.6, alpha=0.35, label="loss")
    ax.plot(steps, smoothed(list(losses), window), lw=1.8, label=f"mean of last {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (negative ELBO)")
    ax.set_title(title)
    ax.legend()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _samples(source, site: str, num_samples: int, args: tuple, kwargs: dict):
    """``(num_samples, *shape)`` draws of ``site`` from a run posterior (by weight) or a
    guide (run ``num_samples`` times)."""
    if isinstance(source, TracePosterior) or hasattr(source, "exec_traces"):
        return EmpiricalMarginal(source, site).sample((num_samples,))
    values = [poutine.trace(poutine.block(source, hide_types=["param"])).get_trace(
        *args, **kwargs).nodes[site]["value"] for _ in range(num_samples)]
    return torch.stack(values)


def plot_marginals(source: TracePosterior | Callable, sites: Sequence[str], *args,
                   path: str | Path | None = None, num_samples: int = 2000, bins: int = 40,
                   **kwargs):
    """Histograms of the posterior marginals of ``sites``: one row per site, one panel
    per element (up to :data:`MAX_PANELS`). ``source``: a run posterior (``Importance``,
    ``SVI.run``, ...) or a guide, run with ``(*args, **kwargs)``. Returns the figure,
    written to ``path`` if given."""
    draws = {s: _samples(source, s, num_samples, args, kwargs).detach().reshape(
        num_samples, -1) for s in sites}
    cols = min(MAX_PANELS, max(d.shape[1] for d in draws.values()))
    fig, axes = _figure(len(sites), cols, width=3.2, height=2.6)
    for row, (site, values) in enumerate(draws.items()):
        for col in range(cols):
            ax = axes[row, col]
            if col >= values.shape[1]:
                ax.set_axis_off()
                continue
            ax.hist(values[:, col].double().numpy(), bins=bins, density=True, alpha=0.8)
            label = site if values.shape[1] == 1 else f"{site}[{col}]"
            ax.set_title(label)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
