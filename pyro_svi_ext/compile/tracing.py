"""What tracing a step needs: the param store, ``pyro.module`` networks and ``PyroModule``
autoguides serve the graph's input tensors while the step is traced, and everything is
put back afterwards."""

from __future__ import annotations

import contextlib
import inspect
import os
import traceback
from contextlib import contextmanager
from pathlib import Path

import pyro
import torch

from pyro_svi_ext.pyro_compat import (
    get_module_parameter,
    modules_read_from_store,
    pyro_module_slots,
    set_module_parameter,
    store_serving,
)


class Untraceable(Exception):  # noqa: N818 - a reason, not an error the user sees
    """The step cannot be traced into a static graph (the message says why; ``where``:
    the line of code that made it, when known, see :func:`code_location`; ``cause``:
    whose code it was, see :func:`whose_code`)."""

    where: str | None = None
    cause: str | None = None


#: where frames are not the place a user looks for: torch, this package, and the
#: standard library's context managers
_TORCH = os.path.dirname(torch.__file__) + os.sep
_OURS = str(Path(__file__).resolve().parents[1]) + os.sep
_PLUMBING = (_TORCH, _OURS, contextlib.__file__)
_PYRO = os.path.dirname(pyro.__file__) + os.sep
#: the recorder's own frames (where a read is caught, not where it is made)
_RECORDING = (str(Path(__file__).resolve().parent) + os.sep,)


def whose_code(frames: list[traceback.FrameSummary]) -> str:
    """Whose code made a value read (innermost frame outside torch, the standard
    library's context managers and the recorder): ``"pyro_svi_ext"`` (this package's
    own, a bug to fix), ``"pyro"`` (Pyro's), or ``"model"`` (the user's)."""
    for frame in reversed(frames):
        if frame.filename.startswith((_TORCH, contextlib.__file__, *_RECORDING)):
            continue
        if frame.filename.startswith(_OURS):
            return "pyro_svi_ext"
        return "pyro" if frame.filename.startswith(_PYRO) else "model"
    return "pyro_svi_ext"


def code_location(frames: list[traceback.FrameSummary]) -> str | None:
    """Where in the model's code (innermost first) a step did something a graph cannot
    hold: ``file:line``; a line inside Pyro also names the user's line that called
    it. ``frames``: outermost first (``traceback.extract_stack`` /
    ``extract_tb``)."""
    inner = None
    for frame in reversed(frames):
        if frame.filename.startswith(_PLUMBING):
            continue
        place = f"{frame.filename}:{frame.lineno} ({frame.name})"
        if frame.filename.startswith(_PYRO):
            inner = inner or f"{place} in Pyro's code"
            continue
        return place if inner is None else f"{inner}, called from {place}"
    return inner


def untraceable_here(reason: str) -> Untraceable:
    """:class:`Untraceable` for ``reason``, with the model's line that is running."""
    error = Untraceable(reason)
    frames = traceback.extract_stack()[:-1]
    error.where, error.cause = code_location(frames), whose_code(frames)
    return error


class NewParams(Untraceable):
    """The step created params the compiled step does not know yet (a model whose
    structure grew, e.g. a site that appears once an argument crosses a threshold):
    this step runs eagerly and records them, the next one traces with them."""


@contextmanager
def params_bound_to(names: list[str], values: list[torch.Tensor]):
    """The param store serves ``values`` for ``names`` (and is restored afterwards,
    including anything written to it meanwhile); distribution validation is off.

    :class:`Untraceable` if the step writes the store (a new param, a rewritten one)."""
    validating = pyro.poutine.util.is_validation_enabled()
    pyro.enable_validation(False)
    try:
        with store_serving(names, values) as served:
            bound = dict(served)
            yield
            if any(served.get(n) is not v for n, v in bound.items()):
                raise Untraceable("the step writes pyro's param store (a value set outside "
                                  "the optimizer), which a compiled graph cannot do")
            if served.keys() != bound.keys():
                raise NewParams(f"new params {sorted(set(served) - set(bound))}")
    finally:
        pyro.enable_validation(validating)


#: while tracing, ``pyro.module`` networks compute with the param store's values (the
#: graph's inputs); every module's own parameters are put back afterwards
modules_follow_the_store = modules_read_from_store


@contextmanager
def pyro_modules_bound_to(callables, names: list[str], values: list[torch.Tensor]):
    """While tracing, the parameters of ``PyroModule`` s (autoguides) among
    ``callables`` hold the bound values, so a module reads them without rewriting the
    param store; restored afterwards."""
    bound = dict(zip(names, values, strict=True))
    saved: list = []
    for fn in callables:
        fn = inspect.unwrap(fn)  # e.g. DistributedSVI's sharded guide
        if not isinstance(fn, torch.nn.Module):
            continue
        for sub, name, key in pyro_module_slots(fn):
            value = bound.get(name)
            if value is not None:
                saved.append((sub, key, get_module_parameter(sub, key)))
                set_module_parameter(sub, key, value)
    try:
        yield
    finally:
        for sub, key, original in reversed(saved):
            set_module_parameter(sub, key, original)
