"""The collectives of a data-parallel step, over one ``torch.distributed`` group.

A step's gradients (and loss) are summed in flat buckets, one collective per bucket
rather than one per parameter (:meth:`Group.sum_flat`); the caller puts its flags (did
this rank fail, did its layout change) in the first bucket, so that the common step
makes one collective. The first step, before any layout is known, starts with a small
header (``MAX`` of ``[failed, layout, -layout]``). Any error of
the group itself (a peer gone, the timeout reached) comes out as
:class:`DistributedStepError`.
"""

from __future__ import annotations

import atexit
import datetime
import os
import zlib
from collections.abc import Sequence

import torch
import torch.distributed as dist

from pyro_svi_ext.errors import DistributedStepError

#: elements per flat bucket (25 MB of float32, DDP's default bucket size)
BUCKET_ELEMENTS = 25 * 2**20 // 4


class Group:
    """``world`` processes (this one is ``rank``) that reduce together; a world of one
    (no ``torch.distributed``) reduces nothing.

    :param timeout: seconds any collective may wait for the other ranks.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.group = None
        self._owns_default = False
        self.rank, self.world = 0, 1
        if not dist.is_available():
            return
        if not dist.is_initialized():
            if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
                return  # plain `python script.py`: one process
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend, timeout=self._delta())
            self._owns_default = True
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.world > 1:
            self.group = dist.new_group(backend=group_backend(dist.get_backend()),
                                        timeout=self._delta())
            # torn down before the interpreter's own teardown: left to that, gloo's
            # sockets could abort a process whose peer had already exited (seen as
            # exit code -6 in 2 of about 20 two-process test runs)
            atexit.register(self.close)

    def close(self) -> None:
        """Release this group (and the default group, if this object started it)."""
        if self.group is None or not dist.is_initialized():
            return
        try:
            dist.destroy_process_group(self.group)
            if self._owns_default:
                dist.destroy_process_group()
        except Exception:  # already torn down by the user: nothing left to release
            pass
        self.group = None

    def _delta(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.timeout)

    def _guarded(self, what: str, call, *args, **kwargs):
        try:
            return call(*args, group=self.group, **kwargs)
        except DistributedStepError:
            raise
        except Exception as err:  # gloo/NCCL: a peer closed, or the timeout
            raise DistributedStepError(
                f"rank {self.rank}: {what} did not complete with all {self.world} "
                f"processes within {self.timeout:g} s (another rank died, hangs or "
                f"stopped calling step): {type(err).__name__}: {err}") from err

    def header(self, failed: bool, layout: int, device: torch.device) -> tuple[bool, bool]:
        """``(any rank failed, layouts differ)``, from one small ``MAX`` all-reduce."""
        flags = torch.tensor([int(failed), layout, -layout], dtype=torch.int64, device=device)
        self._guarded("the step's header", dist.all_reduce, flags, op=dist.ReduceOp.MAX)
        any_failed, top, minus_bottom = flags.tolist()
        return bool(any_failed), top != -minus_bottom

    def gather(self, obj: object) -> list:
        """Every rank's ``obj`` (pickled), in rank order."""
        out: list = [None] * self.world
        self._guarded("gathering", dist.all_gather_object, out, obj)
        return out

    def sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place, in flat buckets per dtype/device."""
        write_back(self.sum_flat(tensors))

    def sum_flat(self, tensors: Sequence[torch.Tensor]) -> list[Bucket]:
        """The sums over the ranks of ``tensors``, in flat buckets (one collective per
        bucket, the first tensor in the first bucket); the tensors are left as they are
        until :func:`write_back`."""
        groups: dict[tuple, list[torch.Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        out = []
        for members in groups.values():
            for bucket in _buckets(members):
                flat = torch.cat([t.reshape(-1) for t in bucket])
                self._guarded("the gradient all-reduce", dist.all_reduce, flat)
                out.append((bucket, flat))
        return out

    def broadcast_(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Overwrite each tensor with rank 0's; whether any rank's values changed."""
        changed = False
        for bucket in _buckets(list(tensors)):
            flat = torch.cat([t.detach().reshape(-1) for t in bucket])
            mine = flat.clone()
            self._guarded("broadcasting parameters", dist.broadcast, flat, src=0)
            changed |= not torch.equal(mine, flat)
            with torch.no_grad():
                torch._foreach_copy_([t.data for t in bucket], _shaped(flat, bucket))
        flag = torch.tensor([int(changed)])
        self._guarded("broadcasting parameters", dist.all_reduce, flag,
                      op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        self._guarded("broadcasting a checkpoint", dist.broadcast_object_list, box, src=0)
        return box[0]

    def barrier(self) -> None:
        self._guarded("the barrier", dist.barrier)


def group_backend(default: str) -> str:
    """The backend of this package's group, given the default group's: with NCCL, gloo
    beside it for CPU tensors (the step's header, the flags of a broadcast and
    ``evaluate_loss``'s total are CPU tensors, which NCCL alone refuses), where gloo is
    built; else the default group's."""
    if default == "nccl" and dist.is_gloo_available():
        return "cpu:gloo,cuda:nccl"
    return default


#: tensors and the flat sum of their concatenation
Bucket = tuple[list[torch.Tensor], torch.Tensor]


def write_back(buckets: list[Bucket]) -> None:
    """Copy each bucket's flat sums into its tensors."""
    for bucket, flat in buckets:
        torch._foreach_copy_(bucket, _shaped(flat, bucket))


def _buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    out: list[list[torch.Tensor]] = [[]]
    size = 0
    for t in tensors:
        if out[-1] and size + t.numel() > BUCKET_ELEMENTS:
            out.append([])
            size = 0
        out[-1].append(t)
        size += t.numel()
    return [b for b in out if b]


def _shaped(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    parts = flat.split([t.numel() for t in like])
    return [part.view_as(t) for part, t in zip(parts, like, strict=True)]


def layout_hash(items: Sequence[tuple]) -> int:
    """A stable 62-bit digest of ``items`` (names and shapes): equal on every rank that
    holds the same layout."""
    text = repr(list(items)).encode()
    return zlib.crc32(text) << 30 ^ zlib.adler32(text)
