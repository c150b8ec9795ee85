"""The training loop: steps with a progress bar, the loss history, callbacks and an
optional convergence stop (:meth:`~pyro_svi_ext.SVI.fit`, and :meth:`SVI.run`'s steps).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyro_svi_ext import validation

#: running loss shown in the progress bar: the mean of the last this many losses
RUNNING_WINDOW = 100
#: the progress bar's loss is refreshed every this many steps (a refresh costs ~20 us)
REFRESH_EVERY = 10


@dataclass(frozen=True)
class Convergence:
    """Stop when the mean loss of the last ``window`` steps differs from the mean of the
    ``window`` before by less than ``rtol`` of its size (checked once ``2 * window``
    steps were taken).

    ``window``: an int >= 1; ``rtol``: a finite number >= 0 (0: stop only on an
    unchanged mean). Anything else is refused here, naming the argument."""

    window: int = 100
    rtol: float = 1e-4

    def __post_init__(self) -> None:
        validation.integer("Convergence", "window", self.window, minimum=1)
        validation.real("Convergence", "rtol", self.rtol, minimum=0.0)

    def reached(self, losses: Sequence[float]) -> bool:
        w = self.window
        if len(losses) < 2 * w:
            return False
        recent = sum(losses[-w:]) / w
        before = sum(losses[-2 * w:-w]) / w
        return math.isfinite(recent) and abs(recent - before) <= self.rtol * abs(before)


class LossHistory(list):
    """The loss of each step taken (floats), and why the loop ended early
    (``stop_reason``: None when it took every step)."""

    stop_reason: str | None = None


def running_loss(losses: Sequence[float]) -> float:
    """The mean of the last :data:`RUNNING_WINDOW` finite losses (nan if none)."""
    tail = [x for x in losses[-RUNNING_WINDOW:] if math.isfinite(x)]
    return sum(tail) / len(tail) if tail else float("nan")


def _progress(total: int, enabled: bool | None, label: str):
    """A tqdm bar, on when asked or (``None``) when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="step", dynamic_ncols=True, leave=True)


def train(svi, num_steps: int, args: tuple, kwargs: dict, progress_bar: bool | None = None,
          callbacks: Sequence[Callable] = (), convergence: Convergence | None = None
          ) -> LossHistory:
    """``num_steps`` steps of ``svi`` (see :meth:`~pyro_svi_ext.SVI.fit`)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative int, got {num_steps!r}")
    if convergence is not None and not isinstance(convergence, Convergence):
        raise validation.ArgumentTypeError(
            f"fit: convergence must be a Convergence(window, rtol) or None, got {convergence!r}")
    if not all(callable(c) for c in callbacks):
        raise validation.ArgumentTypeError(
            f"fit: callbacks must be callables callback(svi, step, loss), got {callbacks!r}")
    history = LossHistory()
    bar = _progress(num_steps, progress_bar, getattr(svi.loss_fn, "estimator_name", "SVI"))
    try:
        for i in range(num_steps):
            history.append(svi.step(*args, **kwargs))
            if bar is not None:
                bar.update(1)
                if i % REFRESH_EVERY == 0 or i == num_steps - 1:
                    bar.set_postfix(loss=f"{running_loss(history):.4g}", refresh=False)
            if svi.stop_reason is not None:
                history.stop_reason = svi.stop_reason
                break
            if any(callback(svi, i, history[-1]) for callback in callbacks):
                history.stop_reason = f"a callback stopped training at step {i}"
                break
            if convergence is not None and convergence.reached(history):
                history.stop_reason = (f"converged at step {i} (relative change of the "
                                       f"{convergence.window}-step mean below "
                                       f"{convergence.rtol})")
                break
    finally:
        if bar is not None:
            bar.close()
    return history
