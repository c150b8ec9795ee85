"""The ``torch.nn.Module`` state a compiled step depends on beyond the param store.

A Pyro model or guide runs networks (``pyro.module``, ``PyroModule``, or a module in a
closure). Two things of theirs decide what a step computes without being params:

- each module's ``training`` flag: BatchNorm and Dropout compute other ops in
  ``eval()`` mode, so the flags are part of the guard key (:mod:`.guard`), and a switch
  selects or traces another graph;
- their buffers (BatchNorm's running statistics and ``num_batches_tracked``): graph
  inputs, never constants, so every graph reads their current values; a graph writes
  the new values in place once per step, as the eager step does.

The modules a step runs are found by a global forward pre-hook while the eager first
step and each trace run (every submodule of a module that ran is included: a parent may
read a child's buffer without calling it). Tracing and its checks run on copies of the
buffers, so no module state moves more often than under the eager step.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from pyro_svi_ext.compile.guard import signature

_TRAINING = operator.attrgetter("training")
_NOTHING = ((), ())


@contextmanager
def modules_that_run(found: dict[int, torch.nn.Module]) -> Iterator[dict]:
    """While active, every module whose ``forward`` is called (and its submodules) is
    added to ``found`` (by ``id``, in the order first seen)."""

    def note(module: torch.nn.Module, _args) -> None:
        if id(module) not in found:
            for sub in module.modules():
                found.setdefault(id(sub), sub)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(note)
    try:
        yield found
    finally:
        handle.remove()


class ModuleState:
    """The modules a step runs, in a fixed order, and their distinct buffer tensors.

    :param modules: the modules (each once).
    """

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.modules = list(modules)
        #: for each distinct buffer tensor, every ``(module, attribute)`` that holds it
        self.slots: list[list[tuple[torch.nn.Module, str]]] = []
        at: dict[int, int] = {}
        for module in self.modules:
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is None:
                    continue
                if id(buffer) not in at:
                    at[id(buffer)] = len(self.slots)
                    self.slots.append([])
                self.slots[at[id(buffer)]].append((module, name))

    def __len__(self) -> int:
        return len(self.slots)

    def covers(self, modules: dict[int, torch.nn.Module]) -> bool:
        """Whether every module in ``modules`` is among this state's."""
        known = {id(m) for m in self.modules}
        return all(k in known for k in modules)

    def buffers(self) -> list[torch.Tensor]:
        """The current buffer tensors (read from their modules on every call: a buffer
        replaced by ``load_state_dict(assign=True)`` or ``.to()`` is followed)."""
        if not self.slots:
            return []
        return [getattr(*slot[0]) for slot in self.slots]

    def key(self) -> tuple:
        """What the graph depends on: the training flags and the buffers' signatures."""
        if not self.modules:
            return _NOTHING
        if not self.slots:
            return tuple(map(_TRAINING, self.modules)), ()
        return (tuple(map(_TRAINING, self.modules)), tuple(map(signature, self.buffers())))

    def names(self) -> list[str]:
        """A readable name per buffer (``BatchNorm1d.running_mean``)."""
        return [f"{type(slot[0][0]).__name__}.{slot[0][1]}" for slot in self.slots]

    @contextmanager
    def bound_to(self, values: list[torch.Tensor]) -> Iterator[None]:
        """The modules hold ``values`` as their buffers (graph inputs while tracing);
        the original tensors are put back afterwards."""
        saved = [[(m, n, getattr(m, n)) for m, n in slot] for slot in self.slots]
        try:
            for slot, value in zip(self.slots, values, strict=True):
                for module, name in slot:
                    setattr(module, name, value)
            yield
        finally:
            for slot in saved:
                for module, name, original in slot:
                    setattr(module, name, original)

    @contextmanager
    def preserved(self) -> Iterator[None]:
        """Whatever runs inside (an eager check of a traced step) leaves the buffers'
        values as they were."""
        buffers = self.buffers()
        before = [b.detach().clone() for b in buffers]
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, value in zip(buffers, before, strict=True):
                    if not torch.equal(buffer, value):
                        buffer.copy_(value)
