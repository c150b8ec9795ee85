"""Full plates as constants while a compiled step is traced.

With fake tensors, the indices of a plate (``torch.arange(size)``) are fake too, so a
sequential ``for i in pyro.plate(...)`` (which reads each index as a Python int) cannot
be traced. A plate that is not subsampled has indices known in advance: inside
:func:`full_plates_are_constant`, the recorder gives such plates real index tensors.
Subsampled plates keep their traced random draws.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_ACTIVE = [False]


@contextmanager
def full_plates_are_constant() -> Iterator[None]:
    """While tracing: non-subsampled plates get real (constant) index tensors."""
    _ACTIVE.append(True)
    try:
        yield
    finally:
        _ACTIVE.pop()


def constant_indices(fn) -> torch.Tensor | None:
    """The indices of a plate's index draw ``fn`` as a real tensor when active and the
    plate is full (``arange(size)``) or a full block of it (``arange(start, stop)``, a
    data-parallel shard), else None."""
    start, stop = 0, fn.size
    if getattr(fn, "full_block", False):
        start, stop = fn.start, fn.stop
    elif fn.subsample_size is not None and fn.subsample_size < fn.size:
        return None
    if not _ACTIVE[-1]:
        return None
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

    with unset_fake_temporarily(), disable_proxy_modes_tracing():
        indices = torch.arange(start, stop, device=fn.device).as_subclass(_KnownIndices)
    indices.bounds = (start, stop)
    return indices


class _KnownIndices(torch.Tensor):
    """``arange(*bounds)`` that iterates as Python ints (no tensor reads while tracing);
    torch ops see a plain tensor."""

    bounds: tuple[int, int]
    __torch_function__ = torch._C._disabled_torch_function_impl

    def __iter__(self):
        return iter(range(*self.bounds))
