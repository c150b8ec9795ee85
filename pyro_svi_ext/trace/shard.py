"""Data-parallel sharding of one plate, as a messenger around the model and the guide.

One process of ``world`` (its ``rank``) sees its block of the data plate. The messenger
first runs unsharded (``discover``), recording the plates it meets, the data plate's
rows per call, and the structure of the run (to check that every rank runs the same
program); then (``shard``) it replaces the plate's index draw with the rank's share:

- a full plate of ``N`` (``N`` rows per call): the block ``[r*N/W, (r+1)*N/W)``;
- ``subsample=idx`` given by the model: the rank's slice of ``idx``;
- ``subsample_size=B``: ``B`` indices drawn from the rank's block (each rank a
  minibatch of its own); with ``exact=True`` and batch-shaped data arguments, the
  rank's slice of the draw one process would make.

Pyro's plate then scales the sites in it by ``size / len(indices)``, so the mean of the
ranks' losses is the one-process loss. A plate sized from sliced data (``len(x)``,
``N/W`` on a rank) keeps its indices, and the messenger scales its sites by ``W``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from pyro.poutine.messenger import Messenger

from pyro_svi_ext.pyro_compat import block_subsample, hidden_from_traces, is_subsample


class ShardingError(ValueError):
    """The data plate cannot be split over the processes (named plate missing or
    ambiguous, a size the world size does not divide, an option that cannot hold)."""


@dataclass
class PlateSeen:
    """A plate as one unsharded run met it."""

    size: int
    #: indices per call (``size`` for a full plate)
    rows: int
    #: ``"full"``, ``"given"`` (``subsample=``) or ``"drawn"`` (``subsample_size=``)
    kind: str


@dataclass
class Discovery:
    """What an unsharded run of model and guide recorded."""

    plates: dict[str, PlateSeen] = field(default_factory=dict)
    #: outermost plate of each observed site (None: outside every plate)
    observed_in: dict[str, str | None] = field(default_factory=dict)
    #: ``(role, name, observed, shape)`` of each sample site, in order
    structure: list[tuple] = field(default_factory=list)
    #: the plates each sample site is in, by site name
    plates_of: dict[str, set[str]] = field(default_factory=dict)


class ShardMessenger(Messenger):
    """Discovers, then shards, the data plate (see the module). Inactive (a no-op)
    unless :meth:`discover` or :meth:`shard` was called.

    :param rank: this process's rank.
    :param world: the number of processes.
    """

    def __init__(self, rank: int, world: int):
        super().__init__()
        self.rank, self.world = rank, world
        self.mode: str | None = None
        self.found = Discovery()
        self.role = "model"
        self.plate: str | None = None
        self.seen: PlateSeen | None = None
        self.exact = False
        self.split_args = False
        # plates sized from sliced data, met in this run: their sites scale by world
        self._local_plates: set[str] = set()
        # plates met with subsample= given (while discovering)
        self._given: set[str] = set()
        self._live = 0

    # --- modes -------------------------------------------------------------------------
    def discover(self) -> None:
        """Record the next runs (unsharded)."""
        self.mode, self.found, self._given = "discover", Discovery(), set()

    def shard(self, plate: str | None, exact: bool, split_args: bool | None) -> str:
        """Shard from now on; returns the data plate's name. ``plate=None`` picks the
        outermost plate of the observed sites (the largest, if they differ).
        ``split_args=None``: split the data arguments (:meth:`split`) unless the plate
        indexes them (``subsample_size`` with data arguments of the full size).

        Raises :class:`ShardingError` (same on every rank: it reads only what the
        unsharded run recorded)."""
        name = plate if plate is not None else self._pick_plate()
        seen = self.found.plates.get(name)
        if seen is None:
            raise ShardingError(f"DistributedSVI: no plate named {name!r} in the model or "
                                f"guide; plates met: {sorted(self.found.plates) or 'none'}")
        if seen.rows % self.world:
            raise ShardingError(
                f"DistributedSVI: plate {name!r} has {seen.rows} rows per step, which "
                f"{self.world} processes cannot split evenly; use a multiple of "
                f"{self.world} (pad or drop {seen.rows % self.world} rows)")
        self.split_args = seen.kind != "drawn" if split_args is None else split_args
        if exact and seen.kind == "drawn" and not self.split_args:
            raise ShardingError(
                f"DistributedSVI(exact_draws=True): plate {name!r} draws "
                f"subsample_size={seen.rows} indices into the full data, which cannot "
                "be split so that each process's share is one process's draw; use "
                "exact_draws=False, a full plate, or pass subsample=")
        self.mode, self.plate, self.seen, self.exact = "shard", name, seen, exact
        return name

    def _pick_plate(self) -> str:
        outer = {p for p in self.found.observed_in.values() if p is not None}
        if not outer:
            raise ShardingError("DistributedSVI: no observed site is inside a plate, so "
                                "there is no data plate to split; pass plate=<name>")
        sizes = {p: self.found.plates[p].size for p in outer}
        largest = max(sizes.values())
        best = sorted(p for p, s in sizes.items() if s == largest)
        if len(best) > 1:
            raise ShardingError(f"DistributedSVI: plates {best} are equally likely data "
                                "plates; pass plate=<name>")
        return best[0]

    # --- data arguments ------------------------------------------------------------------
    def split(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The rank's block (rows along dim 0) of each tensor argument with as many
        rows as the data plate has per call; others unchanged."""
        if self.mode != "shard" or not self.split_args or not self._live:
            return args, kwargs
        rows = self.seen.rows
        block = rows // self.world
        start = self.rank * block

        def cut(value):
            if torch.is_tensor(value) and value.dim() and value.shape[0] == rows:
                return value[start:start + block]
            return value

        return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}

    # --- messages ------------------------------------------------------------------------
    def wrap(self, fn: Callable, role: str) -> Callable:
        """``fn`` run under this messenger (``role``: "model" or "guide", as recorded)."""

        def sharded(*args, **kwargs):
            self.role = role
            with self:
                return fn(*args, **kwargs)

        sharded.__wrapped__ = fn
        return sharded

    @contextmanager
    def live(self) -> Iterator[None]:
        """Within: the wrapped model and guide are discovered or sharded (outside, as
        for posterior traces, they run unchanged)."""
        self._live += 1
        try:
            yield
        finally:
            self._live -= 1

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or self.mode is None or not self._live:
            return
        if self.mode == "discover":
            if is_subsample(msg["fn"]) and msg["value"] is not None:
                self._given.add(msg["name"])
            return
        if is_subsample(msg["fn"]):
            if msg["name"] == self.plate:
                self._shard_indices(msg)
            return
        if self._local_plates and any(f.name in self._local_plates
                                      for f in msg["cond_indep_stack"]):
            msg["scale"] = msg["scale"] * self.world

    def _shard_indices(self, msg: dict) -> None:
        fn, seen, world, rank = msg["fn"], self.seen, self.world, self.rank
        self._local_plates.discard(self.plate)
        if fn.size * world == seen.size and seen.kind == "full" and self.split_args:
            self._local_plates.add(self.plate)  # plate("data", len(x)) on sliced data
            return
        if fn.size != seen.size:
            raise ShardingError(f"DistributedSVI: plate {self.plate!r} has size {fn.size}, "
                                f"but {seen.size} on the first step")
        if msg["value"] is not None:  # subsample= given: the rank's slice
            given = msg["value"]
            if len(given) % world:
                raise ShardingError(f"DistributedSVI: plate {self.plate!r} got "
                                    f"{len(given)} indices, which {world} processes "
                                    "cannot split evenly")
            block = len(given) // world
            msg["value"] = given[rank * block:(rank + 1) * block]
            return
        if fn.subsample_size is None or fn.subsample_size >= fn.size:
            block = fn.size // world
            msg["fn"] = block_subsample(fn, rank * block, (rank + 1) * block, None)
            return
        draw = fn.subsample_size
        if self.exact:  # positions of one process's draw of world * draw indices
            msg["fn"] = block_subsample(fn, rank * draw, (rank + 1) * draw, draw,
                                        within=world * draw)
            return
        block = fn.size // world
        msg["fn"] = block_subsample(fn, rank * block, (rank + 1) * block, min(draw, block))

    def _postprocess_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or self.mode != "discover" or not self._live:
            return
        fn = msg["fn"]
        if is_subsample(fn):
            rows = len(msg["value"])
            kind = ("given" if msg["name"] in self._given else
                    "full" if rows >= fn.size else "drawn")
            self.found.plates.setdefault(msg["name"], PlateSeen(fn.size, rows, kind))
            return
        if hidden_from_traces(msg["infer"]):
            return
        if msg["is_observed"]:  # the stack lists the outermost plate first
            outer = next((f.name for f in msg["cond_indep_stack"]
                          if f.name in self.found.plates), None)
            self.found.observed_in[msg["name"]] = outer
        self.found.plates_of.setdefault(msg["name"], set()).update(
            f.name for f in msg["cond_indep_stack"])
        value = msg["value"]
        shape = tuple(value.shape) if torch.is_tensor(value) else ()
        self.found.structure.append((self.role, msg["name"], msg["is_observed"], shape))
