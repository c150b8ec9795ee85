"""Which networks a run registers with ``pyro.module``: their buffers (a BatchNorm's
running statistics) live outside the param store, so a checkpoint needs the networks
themselves, and a checkpoint loaded into a fresh process binds its values to them as
the first step registers them."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator

import torch
from pyro.poutine.messenger import Messenger

from pyro_svi_ext.pyro_compat import MODULE_DIVIDER, module_being_registered


def _referenced(obj: object) -> Iterator[object]:
    """What a callable refers to: a function's closure cells and the globals its code
    names, a bound method's object, a partial's function and arguments, an object's
    attributes (a callable object, a guide holding its network)."""
    if isinstance(obj, types.FunctionType):
        for cell in obj.__closure__ or ():
            try:
                yield cell.cell_contents
            except ValueError:  # an empty cell
                continue
        codes, names = [obj.__code__], set()
        while codes:
            code = codes.pop()
            names.update(code.co_names)
            codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        yield from (obj.__globals__[n] for n in sorted(names) if n in obj.__globals__)
        yield from obj.__defaults__ or ()
        if hasattr(obj, "__wrapped__"):
            yield obj.__wrapped__
    elif isinstance(obj, types.MethodType):
        yield obj.__func__
        yield obj.__self__
    elif isinstance(obj, functools.partial):
        yield obj.func
        yield from obj.args
        yield from obj.keywords.values()
    elif not isinstance(obj, (type, types.ModuleType, torch.Tensor)) and hasattr(
            obj, "__dict__"):
        yield from list(vars(obj).values())


def reachable_modules(*roots: object, depth: int = 4) -> list[torch.nn.Module]:
    """The ``nn.Module`` s (submodules included) that ``roots`` (a model and a guide)
    refer to within ``depth`` references: closures, globals their code names, bound
    objects; where a network registered with ``pyro.module`` usually is."""
    found: dict[int, torch.nn.Module] = {}
    seen: set[int] = set()
    frontier = list(roots)
    for _ in range(depth + 1):
        following = []
        for obj in frontier:
            if id(obj) in seen or len(seen) > 10_000:
                continue
            seen.add(id(obj))
            if isinstance(obj, torch.nn.Module):
                found.update((id(m), m) for m in obj.modules())
                continue
            if isinstance(obj, (list, tuple, set, frozenset)):
                following.extend(obj)
            elif isinstance(obj, dict):
                following.extend(obj.values())
            else:
                following.extend(_referenced(obj))
        frontier = following
    return list(found.values())


def network_name(param_name: str) -> str | None:
    """``"net"`` for ``pyro.module("net", ...)``'s param ``"net$$$fc.weight"``; None for
    a param of no network."""
    name, divider, _ = param_name.partition(MODULE_DIVIDER)
    return name if divider else None


class ModuleWatcher(Messenger):
    """Sees each ``param`` message of the runs it is active for, before the param store
    answers it.

    ``modules``: ``{network name: nn.Module}`` of the networks registered with
    ``pyro.module`` (accumulated over runs; a name registered with another network
    later takes that one). ``on_module(name, module)`` is called when a run first
    registers a network under ``name``; ``on_param(name, init, constraint)`` for each
    param (``init``: the initial tensor or callable given, or None). Either may raise to
    stop the run.
    """

    def __init__(self, on_module: Callable | None = None, on_param: Callable | None = None):
        super().__init__()
        self.modules: dict[str, torch.nn.Module] = {}
        self.on_module = on_module
        self.on_param = on_param
        self._seen: set[str] = set()  # network names met in this run

    def __enter__(self):
        self._seen = set()
        return super().__enter__()

    def _pyro_param(self, msg: dict) -> None:
        name = msg["name"]
        network = network_name(name)
        if network is not None and network not in self._seen:
            module = module_being_registered()
            if module is not None:
                self._seen.add(network)
                self.modules[network] = module
                if self.on_module is not None:
                    self.on_module(network, module)
        if self.on_param is not None:
            args = msg["args"]
            self.on_param(name, args[1] if len(args) > 1 else None,
                          (msg.get("kwargs") or {}).get("constraint"))
