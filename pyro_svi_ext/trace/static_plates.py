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


def constant_indices(size: int, subsample_size: int | None, device) -> torch.Tensor | None:
    """``arange(size)`` as a real tensor when active and the plate is full, else None."""
    if not _ACTIVE[-1] or (subsample_size is not None and subsample_size < size):
        return None
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

    with unset_fake_temporarily(), disable_proxy_modes_tracing():
        indices = torch.arange(size, device=device).as_subclass(_KnownIndices)
    indices.count = size
    return indices


class _KnownIndices(torch.Tensor):
    """``arange(count)`` that iterates as Python ints (no tensor reads while tracing);
    torch ops see a plain tensor."""

    count: int
    __torch_function__ = torch._C._disabled_torch_function_impl

    def __iter__(self):
        return iter(range(self.count))
