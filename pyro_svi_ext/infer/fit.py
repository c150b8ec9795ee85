"""The training loop: steps with a progress bar, the loss history, callbacks and an
optional convergence stop (:meth:`~pyro_svi_ext.SVI.fit`, and :meth:`SVI.run`'s steps).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyro_svi_ext import validation

#: running loss shown in the progress bar: the mean of the last this many losses
RUNNING_WINDOW = 100
#: the progress bar's loss is refreshed every this many steps (a refresh costs ~20 us)
REFRESH_EVERY = 10

logger = logging.getLogger(__name__)


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


def _progress(total: int, enabled: bool | None, label: str, initial: int = 0):
    """A tqdm bar, on when asked or (``None``) when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="step", dynamic_ncols=True, leave=True,
                initial=initial)


def _resumed(svi, checkpoint: str | os.PathLike | None, num_steps: int) -> LossHistory:
    """The losses so far: none, or (``checkpoint`` exists) those of the run it resumes."""
    if checkpoint is None or not Path(checkpoint).exists():
        return LossHistory()
    svi.load(checkpoint)
    history = svi.losses
    logger.info("resuming from checkpoint %s: %d of %d steps taken%s", checkpoint,
                len(history), num_steps,
                f" (the run had ended: {history.stop_reason})" if history.stop_reason else "")
    return history


def _stop_reason(svi, step: int, history: LossHistory, callbacks: Sequence[Callable],
                 convergence: Convergence | None) -> str | None:
    """Why training ends after ``step`` (None: it goes on)."""
    if svi.stop_reason is not None:
        return svi.stop_reason
    if any(callback(svi, step, history[-1]) for callback in callbacks):
        return f"a callback stopped training at step {step}"
    if convergence is not None and convergence.reached(history):
        return (f"converged at step {step} (relative change of the {convergence.window}-step "
                f"mean below {convergence.rtol})")
    return None


def train(svi, num_steps: int, args: tuple, kwargs: dict, progress_bar: bool | None = None,
          callbacks: Sequence[Callable] = (), convergence: Convergence | None = None,
          checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 100
          ) -> LossHistory:
    """``num_steps`` steps of ``svi`` (see :meth:`~pyro_svi_ext.SVI.fit`), resumed from
    and saved to ``checkpoint`` when given."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative int, got {num_steps!r}")
    validation.integer("fit", "checkpoint_every", checkpoint_every, minimum=1)
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise validation.ArgumentTypeError(
            f"fit: checkpoint must be a file path or None, got {checkpoint!r}")
    if convergence is not None and not isinstance(convergence, Convergence):
        raise validation.ArgumentTypeError(
            f"fit: convergence must be a Convergence(window, rtol) or None, got {convergence!r}")
    if not all(callable(c) for c in callbacks):
        raise validation.ArgumentTypeError(
            f"fit: callbacks must be callables callback(svi, step, loss), got {callbacks!r}")
    history = _resumed(svi, checkpoint, num_steps)
    if history.stop_reason is not None or len(history) >= num_steps:
        return history
    svi.losses = history  # (a checkpoint saved meanwhile holds the losses so far)
    if checkpoint is not None:
        svi._checkpoints.convergence = convergence
    bar = _progress(num_steps, progress_bar, getattr(svi.loss_fn, "estimator_name", "SVI"),
                    initial=len(history))
    try:
        for i in range(len(history), num_steps):
            history.append(svi.step(*args, **kwargs))
            if bar is not None:
                bar.update(1)
                if i % REFRESH_EVERY == 0 or i == num_steps - 1:
                    bar.set_postfix(loss=f"{running_loss(history):.4g}", refresh=False)
            history.stop_reason = _stop_reason(svi, i, history, callbacks, convergence)
            if checkpoint is not None and (history.stop_reason is not None
                                           or (i + 1) % checkpoint_every == 0
                                           or i + 1 == num_steps):
                svi.save(checkpoint)
            if history.stop_reason is not None:
                break
    finally:
        if bar is not None:
            bar.close()
    return history
