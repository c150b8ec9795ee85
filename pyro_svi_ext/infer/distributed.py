"""Data-parallel SVI over ``torch.distributed``: the same program on every process, each
on its block of the data plate, gradients averaged before every update.

Launched with ``torchrun --nproc-per-node=W script.py`` (gloo on CPU, NCCL on CUDA); the
one change to a script is ``SVI(...)`` → ``DistributedSVI(...)``. Run with plain
``python``, it is an ordinary SVI (a world of one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import pyro
import pyro.optim
import torch

from pyro_svi_ext import validation
from pyro_svi_ext.errors import CheckpointError, DistributedStepError, NonFiniteLossError
from pyro_svi_ext.estimators.tracegraph_elbo import AVG_BASELINE_PREFIX
from pyro_svi_ext.infer.checkpoint_file import random_state, read, write_atomically
from pyro_svi_ext.infer.collectives import Group, layout_hash, write_back
from pyro_svi_ext.infer.svi import SVI
from pyro_svi_ext.pyro_compat import store_tensors
from pyro_svi_ext.trace.shard import ShardingError, ShardMessenger

logger = logging.getLogger(__name__)

#: seed offset between ranks' independent random streams (a prime, far from small seeds)
SEED_STRIDE = 1_000_003


class DistributedSVI(SVI):
    """SVI whose steps are split over the processes of a ``torch.distributed`` group.

    Every rank calls :meth:`step` with the same (full) arguments. The first step runs
    unsharded on every rank: it finds the data plate, checks that all ranks run the
    same model and guide (site names, shapes, params) and aligns the params to rank 0's.
    From the second step on, each rank runs its share of the data plate (see
    :mod:`pyro_svi_ext.trace.shard`): tensor arguments with as many rows as the plate
    has per step are cut to the rank's block along dim 0 (a full plate, or
    ``subsample=``); a plate with ``subsample_size=B`` draws ``B`` indices from the
    rank's block instead (a global minibatch of ``W*B``). The gradients (and the
    decaying-average baselines of ``TraceGraph_ELBO`` for sites outside the data plate;
    those of sites inside it are one per datum and stay with the rank that owns the
    datum) are averaged in flat buckets. The loss returned is the global one, equal on
    every rank; so are the params (all but those per-datum averages) and the optimizer
    state after every step.

    :param model, guide, optim, loss: as :class:`~pyro_svi_ext.SVI` (any estimator of
        this package, compiled ones included; ``RenyiELBO`` is refused: its objective
        does not split into a sum over data shards).
    :param plate: the data plate's name; default: the outermost plate of the observed
        sites (``ShardingError`` if that is ambiguous).
    :param exact_draws: every rank draws the random numbers one process would draw, so
        the run equals a one-process run (for testing; exact when the per-datum sites
        are observed or enumerated). Default: each rank draws its own particles.
    :param split_args: cut tensor arguments to the rank's block (``None``: unless the
        plate draws ``subsample_size`` indices into full-size data).
    :param timeout: seconds a collective waits for the other ranks before every rank
        raises :class:`~pyro_svi_ext.errors.DistributedStepError`.

    Errors, raised alike on every rank: ``ShardingError`` (a ``ValueError``) when the
    plate is missing, ambiguous, or has a row count the world size does not divide;
    ``DistributedStepError`` when another rank's step raised (naming the rank and its
    error), when ranks run different structures (before any gradient is exchanged),
    or when a rank dies or hangs past ``timeout``. The rank whose model raised raises
    its own error. A failed step changes no param or optimizer state.
    """

    def __init__(self, model: Callable, guide: Callable, optim: pyro.optim.PyroOptim,
                 loss, *args, plate: str | None = None, exact_draws: bool = False,
                 split_args: bool | None = None, timeout: float = 300.0, **kwargs):
        if type(loss).__name__ in ("RenyiELBO", "JitRenyiELBO"):
            raise ValueError("DistributedSVI: RenyiELBO's objective (a log-mean-exp over "
                             "particles of the whole data's weight) does not split into a "
                             "sum over data shards; use Trace_ELBO or TraceGraph_ELBO")
        timeout = validation.real("DistributedSVI", "timeout", timeout, finite=False)
        if timeout <= 0:
            raise ValueError(f"DistributedSVI: timeout must be > 0 seconds, got {timeout!r}")
        if plate is not None and not isinstance(plate, str):
            raise validation.ArgumentTypeError(
                f"DistributedSVI: plate must be a plate's name (str) or None, got {plate!r}")
        self.comm = Group(timeout)
        self.rank, self.world = self.comm.rank, self.comm.world
        self.sharding = ShardMessenger(self.rank, self.world)
        self.plate_option, self.exact_draws, self.split_args = plate, exact_draws, split_args
        #: the data plate's name (known after the first step)
        self.plate: str | None = None
        self._steps = 0
        self._aligned = False  # step 1 found different params on the ranks
        self._rng_loaded = False  # a checkpoint gave each rank its own random stream
        #: the agreed params' layout and the payload's (shape, dtype, device), from the
        #: last exchanged step (None before the first)
        self._layout: list | None = None
        self._payload: list[tuple] | None = None
        super().__init__(self.sharding.wrap(model, "model"),
                         self.sharding.wrap(guide, "guide"), optim, loss, *args, **kwargs)

    # --- steps ---------------------------------------------------------------------------
    def step(self, *args, **kwargs) -> float:
        """One data-parallel step (every rank must call it); the global loss."""
        if self._steps == 0:
            self.sharding.discover()
        value = self._counted_step(args, kwargs, whole=False)
        self._steps += 1
        return value

    def step_tensor(self, *args, **kwargs) -> torch.Tensor:
        """:meth:`step`, the loss as a 0-dim tensor."""
        return torch.tensor(self.step(*args, **kwargs))

    def _run_loss_and_grads(self, args: tuple, kwargs: dict):
        try:
            with self.sharding.live():
                args, kwargs = self.sharding.split(args, kwargs)
                return super()._run_loss_and_grads(args, kwargs)
        except Exception as err:
            if self.world > 1:
                self._tell_failure(err)
            raise

    def _tell_failure(self, err: Exception) -> None:
        """Join the step's first collective as failed, so that the other ranks raise
        instead of waiting."""
        try:
            if self._payload is None:
                self.comm.header(True, 0, torch.device("cpu"))
            else:  # zeros in the reference layout, flagged failed
                self.comm.sum_flat(self._zeros(failed=True))
            self.comm.gather((isinstance(err, NonFiniteLossError),
                              f"{type(err).__name__}: {err}"))
        except DistributedStepError as comm_err:  # the others are gone: say our own
            logger.warning("rank %d: could not tell the other ranks: %s", self.rank, comm_err)

    def _combine(self, loss, params: dict[str, torch.Tensor]):
        if self.world == 1:
            if self._steps == 0:
                self.plate = self.sharding.shard(self.plate_option, self.exact_draws,
                                                 self.split_args)
            return loss
        named = sorted({id(p): (n, p) for n, p in params.items()}.values(),
                       key=lambda item: item[0])
        averages = sorted((n, t) for n, t in store_tensors().items()
                          if n.startswith(AVG_BASELINE_PREFIX) and not self._per_rank(n))
        layout = [(n, tuple(p.shape)) for n, p in named + averages]
        try:
            return self._exchange(loss, named, averages, layout)
        except BaseException:
            grads = [p.grad for _, p in named if p.grad is not None]
            if grads:
                torch._foreach_zero_(grads)
            raise

    def _per_rank(self, average: str) -> bool:
        """Whether a decaying average belongs to a site in the data plate: one value
        per datum of the rank's block, kept by that rank (averaging the ranks' would
        mix different data)."""
        site = average[len(AVG_BASELINE_PREFIX):]
        plates = self.sharding.found.plates_of.get(site, set())
        return self.plate is not None and self.plate in plates

    def _drop_unsharded_averages(self) -> None:
        """After step 1 (unsharded), the data plate's sites' averages have the whole
        plate's shape: each rank restarts them at its block's (as on step 1, from 0)."""
        store = pyro.get_param_store()
        for name in [n for n in store.keys() if n.startswith(AVG_BASELINE_PREFIX)]:
            if self._per_rank(name):
                del store[name]

    def _exchange(self, loss, named: list, averages: list, layout: list):
        """Sum ``[flags, loss, gradients, averages]`` over the ranks in one pass of
        buckets. From step 2 on, the flags (failed, layout changed) ride in the first
        bucket, so a step makes one collective; step 1, and a step whose layout changed
        on some rank, first agree on the layout."""
        tensors = []
        for _, p in named:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            tensors.append(p.grad)
        tensors += [t.data for _, t in averages]
        dtype = tensors[0].dtype if tensors else torch.float64
        device = tensors[0].device if tensors else torch.device("cpu")
        values = list(loss) if isinstance(loss, tuple) else [loss]
        payload = [torch.tensor([0.0, 0.0], dtype=dtype, device=device),
                   torch.tensor(values, dtype=dtype, device=device), *tensors]
        sums = None
        if self._payload is not None:  # one collective: flags with the payload
            changed = layout != self._layout or self._specs(payload) != self._payload
            if changed:
                sums = self.comm.sum_flat(self._zeros(changed=True))
            else:
                sums = self.comm.sum_flat(payload)
            failed, changed_anywhere = sums[0][1][:2].tolist()
            if failed:
                self._raise_peer_failure()
            if changed_anywhere:
                sums = None
                self._agree_on_layout(layout)
        else:
            failed, _ = self.comm.header(False, layout_hash(layout), torch.device("cpu"))
            if failed:
                self._raise_peer_failure()
            self._first_step_checks(layout, [p for _, p in named])
        if sums is None:  # the layout was just agreed: its first collective
            sums = self.comm.sum_flat(payload)
        self._layout, self._payload = layout, self._specs(payload)
        write_back(sums)
        scalar = payload[1]
        torch._foreach_div_([*tensors, scalar], float(self.world))
        if self._steps == 0 and self._aligned:
            for t in tensors[:len(named)]:
                t.zero_()
            logger.warning("DistributedSVI: ranks started from different params; they now "
                           "hold rank 0's, and step 1 made no update")
        if self._steps == 0:  # the layout of the next steps: per-rank averages not in it
            self._drop_unsharded_averages()
            keep = [i for i, (name, _) in enumerate(layout) if not self._per_rank(name)]
            self._layout = [layout[i] for i in keep]
            self._payload = self._payload[:2] + [self._payload[2 + i] for i in keep]
        values = scalar.tolist()
        return tuple(values) if isinstance(loss, tuple) else values[0]

    def _raise_peer_failure(self):
        errors = {r: e for r, e in enumerate(self.comm.gather(None)) if e}
        said = "; ".join(f"rank {r}: {text}" for r, (_, text) in errors.items())
        if all(nonfinite for nonfinite, _ in errors.values()):  # the policy decides
            raise NonFiniteLossError(float("nan"), [said])
        raise DistributedStepError(f"step {self._steps + 1} failed on another rank "
                                   f"({said}); nothing was updated")

    def _agree_on_layout(self, layout: list) -> None:
        """Some rank's params changed since the last step (a param created late):
        proceed if every rank's changed alike, else raise naming the difference."""
        every = self.comm.gather(layout)
        if any(theirs != every[0] for theirs in every):
            self._raise_mismatch(layout, "params", every=every)

    @staticmethod
    def _specs(payload: list[torch.Tensor]) -> list[tuple]:
        return [(tuple(t.shape), t.dtype, t.device) for t in payload]

    def _zeros(self, failed: bool = False, changed: bool = False) -> list[torch.Tensor]:
        """The last agreed payload's shapes, zero, with this rank's flags."""
        zeros = [torch.zeros(shape, dtype=dtype, device=device)
                 for shape, dtype, device in self._payload]
        zeros[0][0], zeros[0][1] = float(failed), float(changed)
        return zeros

    def _first_step_checks(self, layout: list, params: list[torch.Tensor]) -> None:
        """Same structure on all ranks (before any gradient moves), the plate split,
        params aligned to rank 0's, then each rank's own random stream."""
        mine = (self.sharding.found.structure, layout)
        every = self.comm.gather(mine)
        for rank, theirs in enumerate(every):
            if theirs != every[0]:
                self._raise_mismatch(layout, "sites", every[0], theirs, rank)
        self.plate = self.sharding.shard(self.plate_option, self.exact_draws,
                                         self.split_args)
        self._aligned = self.comm.broadcast_(params)
        if not self.exact_draws and self.rank and not self._rng_loaded:
            torch.manual_seed(torch.initial_seed() + SEED_STRIDE * self.rank)

    def _raise_mismatch(self, layout, what, first=None, theirs=None, rank=None, every=None):
        if first is None:
            every = every if every is not None else self.comm.gather(layout)
            rank = next(r for r, t in enumerate(every) if t != every[0])
            first, theirs = every[0], every[rank]
        a, b = (_flatten(first), _flatten(theirs))
        diff = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                    min(len(a), len(b)))
        seen0 = a[diff] if diff < len(a) else "nothing"
        seen_r = b[diff] if diff < len(b) else "nothing"
        raise DistributedStepError(
            f"ranks run different models or guides ({what}): rank 0 has {seen0}, rank "
            f"{rank} has {seen_r}; every rank must run the same program (no gradient "
            "was exchanged)")

    # --- losses and checkpoints ------------------------------------------------------------
    def evaluate_loss(self, *args, **kwargs) -> float:
        """The global loss estimate without gradients (a collective after the first
        step: every rank calls it)."""
        if self._steps == 0 or self.world == 1:
            return super().evaluate_loss(*args, **kwargs)
        with self.sharding.live():
            args, kwargs = self.sharding.split(args, kwargs)
            local = super().evaluate_loss(*args, **kwargs)
        total = torch.tensor([local], dtype=torch.float64)
        self.comm.sum_([total])
        return total.item() / self.world

    def save(self, path: str | os.PathLike) -> None:
        """Rank 0 writes the checkpoint (as :meth:`SVI.save`, with every rank's random
        states) to ``path``; a collective: every rank calls it, and every rank raises
        if the write failed."""
        states = self.comm.gather(random_state()) if self.world > 1 else [random_state()]
        failure = None
        if self.rank == 0:
            try:
                write_atomically(path, self._checkpoints.capture(states, self.world))
            except Exception as err:
                failure = err
        if self.world > 1:
            said = self.comm.broadcast_object(None if failure is None else str(failure))
            if said is not None and failure is None:
                raise CheckpointError(f"rank 0 could not write the checkpoint: {said}")
        if failure is not None:
            raise failure

    def load(self, path: str | os.PathLike, map_location=None) -> None:
        """Rank 0 reads ``path`` (written by :meth:`save`, safely: see
        :meth:`SVI.load`), and every rank takes the checkpoint with its own random
        states (a collective; every rank raises alike when it cannot be used). Loaded
        into a new DistributedSVI, the first step is again the unsharded one that finds
        the data plate; with ``exact_draws`` the run goes on as it would have."""
        data = None
        if self.rank == 0:
            try:
                data = read(path, map_location)
            except CheckpointError as err:
                data = {"error": str(err)}
        if self.world > 1:
            data = self.comm.broadcast_object(data)
        if "error" in data:
            raise CheckpointError(data["error"])
        self._checkpoints.load(data, str(path), self.rank, self.world, map_location)
        self._rng_loaded = True


def _flatten(structure) -> list:
    sites, layout = structure if isinstance(structure, tuple) else ([], structure)
    return [f"{role} site {name!r} ({'observed' if obs else 'latent'}, shape {shape})"
            for role, name, obs, shape in sites] + [f"param {n!r} of shape {s}"
                                                     for n, s in layout]


__all__ = ["DistributedSVI", "DistributedStepError", "ShardingError"]
