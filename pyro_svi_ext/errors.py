"""Exceptions raised by the package (each documents where it comes from)."""

from __future__ import annotations


class NonFiniteLossError(ValueError):
    """The ELBO came out NaN or infinite while pyro validation is on.

    ``sites`` lists the offending sites as ``"model:<name> (log_prob sum ...)"`` strings.
    Raised before any gradient or parameter is touched.
    """

    def __init__(self, loss: float, sites: list[str]):
        self.loss = loss
        self.sites = sites
        where = ", ".join(sites) if sites else "no single site (the sum overflowed)"
        super().__init__(f"non-finite loss {loss}; non-finite log-probs at: {where}")


class EmptyPosteriorError(ValueError):
    """A posterior was read before it collected any trace (call ``.run(...)`` first)."""


class NonFiniteLossWarning(UserWarning):
    """A loss came out NaN or infinite without pyro validation (the estimator's notice),
    or :class:`~pyro_svi_ext.SVI` skipped a step for it."""


class DistributedStepError(RuntimeError):
    """A data-parallel step could not complete on every process: another rank raised
    (its rank and error are named), the ranks disagree on the model's structure, or a
    rank died or hung past the timeout. Raised on every rank alike; no parameter or
    optimizer state was changed by the failed step."""


class DeviceMismatchError(RuntimeError, ValueError):
    """A model or guide mixed tensors of two devices (data on the CPU, params on CUDA, or
    the reverse). Raised in place of torch's own ``RuntimeError``, naming the run (model
    or guide), the last sample site it reached, and where the params and the arguments
    of the step are; a ``RuntimeError`` as torch's, and a ``ValueError`` (bad input)."""


class CheckpointError(ValueError):
    """A checkpoint file could not be used: missing, unreadable, truncated, not a
    pyro_svi_ext checkpoint, from a newer format, or holding objects other than tensors
    and plain data (a pickle that could run code is refused, never loaded). The message
    names the path. Nothing was changed."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint of another model or setup: names the first difference (a param's
    name, shape, dtype or constraint, a network's parameters or buffers, the optimizer,
    the number of processes). Refused before anything changed (after a load into an
    empty param store, at the first step, which then puts back what the load set)."""
