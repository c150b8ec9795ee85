"""Checkpoints of an SVI: everything a resumed run needs to continue as the interrupted
one would have, bit for bit (see :meth:`~pyro_svi_ext.SVI.save`).

A checkpoint holds: the param store (unconstrained values, constraints as specs,
``requires_grad``), the buffers of the networks registered with ``pyro.module`` (a
BatchNorm's running statistics and batch count) and of a model or guide that is an
``nn.Module`` (``PyroModule``), the optimizer's per-param state, the step count, the
random states (per process), the loss history (which a convergence check reads), the
non-finite policy and its stop, and the format version.

Loading checks first and changes nothing when the checkpoint is of another model
(:class:`~pyro_svi_ext.errors.CheckpointMismatchError`, naming the first difference).
Into an empty param store (a fresh process), the networks are not known until the model
registers them: their values are put into the networks' own tensors as the first step
registers each, after checking its parameters and buffers, and that step also checks
the params the model asks for against the checkpoint; a mismatch there puts back
everything the load set before raising.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pyro
import pyro.optim
import torch
from pyro.optim.optim import is_scheduler

from pyro_svi_ext.errors import CheckpointError, CheckpointMismatchError
from pyro_svi_ext.infer.checkpoint_file import (
    FORMAT,
    VERSION,
    check_random_state,
    constraint_from_spec,
    constraint_spec,
    describe_spec,
    random_state,
    same_spec,
    set_random_state,
)
from pyro_svi_ext.pyro_compat import (
    MODULE_DIVIDER,
    optim_constructor,
    pending_optim_states,
    per_param_optimizers,
    store_constraints,
    store_tensors,
)
from pyro_svi_ext.trace.module_watch import ModuleWatcher, reachable_modules

_PLAIN = (type(None), bool, int, float, str, torch.Tensor)


def _check_plain(value: object, where: str) -> None:
    """Refuse (at save) what ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"cannot checkpoint {where}: key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise CheckpointError(f"cannot checkpoint {where}: a {type(value).__name__} is not "
                              "a tensor or plain data")


def _optimizer_name(optim: pyro.optim.PyroOptim) -> str:
    cls = optim_constructor(optim)
    return f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', repr(cls))}"


def _network_layout(module: torch.nn.Module) -> dict:
    """``{"params": {path: shape}, "buffers": {path: (shape, dtype)}}`` of a network
    (the parameters ``pyro.module`` registers: those that require grad)."""
    return {"params": {p: list(t.shape) for p, t in module.named_parameters()
                       if t.requires_grad},
            "buffers": {p: (list(t.shape), str(t.dtype)) for p, t in module.named_buffers()}}


def _saved_layout(saved: dict) -> dict:
    return {"params": saved["params"],
            "buffers": {p: (list(t.shape), str(t.dtype)) for p, t in saved["buffers"].items()}}


def _first_difference(what: str, ours: dict, theirs: dict) -> str | None:
    """The first difference between two ``{name: description}`` maps, in words."""
    for name in sorted(set(ours) | set(theirs), key=str):
        if name not in theirs:
            return f"{what} {name!r} is here but not in the checkpoint"
        if name not in ours:
            return f"the checkpoint has {what} {name!r}, which is not here"
        if ours[name] != theirs[name]:
            return f"{what} {name!r}: {ours[name]} here, {theirs[name]} in the checkpoint"
    return None


def _roots(svi) -> dict[str, torch.nn.Module]:
    """The model and guide that are ``nn.Module`` s (a ``PyroModule``, an autoguide),
    unwrapped (e.g. DistributedSVI's sharded callables)."""
    found = {}
    for role in ("model", "guide"):
        fn = inspect.unwrap(getattr(svi, role))
        if isinstance(fn, torch.nn.Module):
            found[role] = fn
    return found


class Checkpoints:
    """The checkpoint side of one SVI: the networks its steps registered (watched on a
    step that meets new params, and while a load waits to bind or check), capture to a
    checkpoint, and load from one (:meth:`load`)."""

    def __init__(self, svi) -> None:
        self.svi = svi
        self.watcher = ModuleWatcher(on_module=self._bind_network, on_param=self._check_param)
        self.watched_size = -1  # the store's size after the last watched step
        #: networks of a load not registered yet: name -> {"params", "buffers"}
        self.pending: dict[str, dict] = {}
        #: after a load into an empty store: the checkpoint's params, checked at the
        #: next step against those the model asks for; and how to undo that load
        self.unverified: dict | None = None
        self._undo: Callable | None = None
        self._overwritten: list[tuple[torch.Tensor, torch.Tensor]] = []  # (tensor, before)
        #: the convergence check of the fit running (recorded in its checkpoints)
        self.convergence = None

    # --- steps ---------------------------------------------------------------------------
    def watching(self) -> bool:
        """Whether the next step runs under the watcher: the store changed since the last
        watched step (a new param, maybe a new network), or a load waits for it."""
        return bool(self.pending) or self.unverified is not None or \
            len(store_tensors()) != self.watched_size

    def watched(self, step: Callable, *args):
        """``step(*args)`` under the watcher; a mismatch with a loaded checkpoint undoes
        that load and raises."""
        try:
            with self.watcher:
                value = step(*args)
        except CheckpointMismatchError:
            if self._undo is not None:
                self._undo()
            raise
        self.watched_size = len(store_tensors())
        self.unverified, self._undo, self._overwritten = None, None, []
        return value

    def _check_param(self, name: str, init, constraint) -> None:
        if self.unverified is None:
            return
        saved = self.unverified.get(name)
        if saved is None:
            raise CheckpointMismatchError(
                f"the checkpoint loaded is of another model: the model or guide has param "
                f"{name!r}, which the checkpoint does not hold")
        if torch.is_tensor(init) and list(init.shape) not in (saved["shape"],
                                                              list(saved["value"].shape)):
            raise CheckpointMismatchError(
                f"the checkpoint loaded is of another model: param {name!r} has shape "
                f"{list(init.shape)} here, {saved['shape']} in the checkpoint")
        # (pyro.param's default, real, is also what a read of an existing param sends:
        # PyroModule's do; only a constraint given is compared)
        if constraint is not None and constraint is not pyro.distributions.constraints.real:
            try:
                spec = constraint_spec(constraint, name)
            except CheckpointError:
                return
            if not same_spec(spec, saved["constraint"]):
                raise CheckpointMismatchError(
                    f"the checkpoint loaded is of another model: param {name!r} has "
                    f"constraint {describe_spec(spec)} here, "
                    f"{describe_spec(saved['constraint'])} in the checkpoint")

    def _bind_network(self, name: str, module: torch.nn.Module) -> None:
        """A network registered for the first time since a load that holds it: check
        its layout, then put the checkpoint's values into its own tensors, which become
        the store's (as if it had trained here)."""
        saved = self.pending.get(name)
        if saved is None:
            return
        difference = _first_difference(f"network {name!r}: parameter or buffer",
                                       _flat_layout(_network_layout(module)),
                                       _flat_layout(_saved_layout(saved)))
        if difference is not None:
            raise CheckpointMismatchError(f"the checkpoint loaded is of another model: "
                                          f"{difference}")
        store = pyro.get_param_store()
        tensors, constraints = store_tensors(), store_constraints()
        if self._undo is not None:  # a load that may yet be undone: keep what was here
            self._overwritten += [(t, t.detach().clone()) for t in
                                  [*module.parameters(), *module.buffers()]]
        with torch.no_grad():
            for path, param in module.named_parameters():
                full = f"{name}{MODULE_DIVIDER}{path}"
                loaded = tensors.get(full)
                if loaded is None or loaded is param or not param.requires_grad:
                    continue
                param.copy_(loaded)
                constraint = constraints[full]
                del store[full]
                store.set_state({"params": {full: param}, "constraints": {full: constraint}})
            for path, buffer in module.named_buffers():
                buffer.copy_(saved["buffers"][path])
        del self.pending[name]

    def _bind_reachable(self) -> None:
        """Bind each waiting network that is the one network of its layout the model and
        guide refer to (a closure, a global): usable at once, before any step (else the
        first step that registers it binds it)."""
        candidates = reachable_modules(self.svi.model, self.svi.guide)
        for name, saved in list(self.pending.items()):
            layout = _flat_layout(_saved_layout(saved))
            matches = {id(m): m for m in candidates
                       if _flat_layout(_network_layout(m)) == layout}
            if len(matches) == 1:
                (module,) = matches.values()
                self.watcher.modules[name] = module
                self._bind_network(name, module)

    # --- capture -------------------------------------------------------------------------
    def capture(self, rng: list | None = None, world: int = 1) -> dict:
        """The checkpoint of the SVI now (``rng``: every process's random states;
        default this one's)."""
        svi = self.svi
        store = pyro.get_param_store()
        tensors, constraints = store_tensors(), store_constraints()
        params = {}
        for name, value in tensors.items():
            params[name] = {"value": value.detach(), "shape": list(store[name].shape),
                            "constraint": constraint_spec(constraints[name], name),
                            "requires_grad": value.requires_grad,
                            "device": str(value.device)}
        networks = {name: dict(saved) for name, saved in self.pending.items()}
        for name, module in self.watcher.modules.items():
            if self._is_bound(name, module):
                layout = _network_layout(module)
                networks[name] = {"params": layout["params"],
                                  "buffers": {p: b.detach() for p, b in
                                              module.named_buffers()}}
        roots = {role: {p: b.detach() for p, b in module.named_buffers()}
                 for role, module in _roots(svi).items()}
        states = dict(pending_optim_states(svi.optim))
        states.update(_optimizer_states(svi.optim))
        data = {"format": FORMAT, "version": VERSION, "params": params, "networks": networks,
                "roots": {r: b for r, b in roots.items() if b},
                "optim": {"constructor": _optimizer_name(svi.optim), "states": states},
                "steps": svi.step_count, "rng": rng if rng is not None else [random_state()],
                "world": world, "losses": list(svi.losses),
                "stop_reason": svi.losses.stop_reason,
                "nonfinite": {"policy": svi.nonfinite, "stop_reason": svi.stop_reason},
                "convergence": None if self.convergence is None else {
                    "window": self.convergence.window, "rtol": self.convergence.rtol}}
        _check_plain(data["optim"], "the optimizer state")
        _check_plain(data["losses"], "the loss history")
        return data

    @staticmethod
    def _is_bound(name: str, module: torch.nn.Module) -> bool:
        """Whether ``module``'s parameters are the store's tensors under ``name``."""
        tensors = store_tensors()
        return any(tensors.get(f"{name}{MODULE_DIVIDER}{path}") is p
                   for path, p in module.named_parameters())

    # --- load ------------------------------------------------------------------------------
    def load(self, data: dict, where: str, rank: int = 0, world: int = 1,
             map_location=None) -> None:
        """Take checkpoint ``data`` (read from ``where``); this process is ``rank`` of
        ``world``. Checks everything, then changes everything."""
        svi = self.svi
        tensors = store_tensors()
        fresh = not tensors
        self._check(data, where, world, fresh, map_location)
        rng = data["rng"][rank if len(data["rng"]) > 1 else 0]
        check_random_state(rng, where)
        values = self._placed(data, where, map_location)
        constraints = {n: constraint_from_spec(e["constraint"])
                       for n, e in data["params"].items()}
        undo = self._undo_of(fresh, data)
        store = pyro.get_param_store()
        with torch.no_grad():
            if fresh:
                store.set_state({"params": values, "constraints": constraints})
            else:
                for name, value in values.items():
                    tensors[name].copy_(value)
        networks = self._bound_networks(data) if not fresh else {}
        with torch.no_grad():
            for name, module in networks.items():
                for path, buffer in module.named_buffers():
                    buffer.copy_(data["networks"][name]["buffers"][path])
            for role, module in _roots(svi).items():
                for path, buffer in module.named_buffers():
                    buffer.copy_(data["roots"][role][path])
        self.pending = {n: s for n, s in data["networks"].items() if n not in networks}
        self._undo, self._overwritten = undo, []
        if fresh:
            self._bind_reachable()
        self._load_optimizer(data["optim"]["states"])
        svi.step_count = data["steps"]
        svi.losses = type(svi.losses)(data["losses"])
        svi.losses.stop_reason = data["stop_reason"]
        svi.stop_reason = data["nonfinite"].get("stop_reason")
        self.watched_size = -1
        self.unverified = data["params"] if fresh else None
        set_random_state(rng, cuda=map_location is None)

    def _check(self, data: dict, where: str, world: int, fresh: bool, map_location) -> None:
        def refuse(difference: str):
            raise CheckpointMismatchError(f"{where} is a checkpoint of another model or "
                                          f"setup: {difference}; nothing was loaded")

        if data["world"] != world:
            refuse(f"it was written by {data['world']} processes, this run has {world}")
        if data["optim"].get("constructor") != _optimizer_name(self.svi.optim):
            refuse(f"its optimizer is {data['optim'].get('constructor')}, this SVI's is "
                   f"{_optimizer_name(self.svi.optim)}")
        ours = {r: {p: list(b.shape) for p, b in m.named_buffers()}
                for r, m in _roots(self.svi).items()}
        theirs = {r: {p: list(b.shape) for p, b in bufs.items()}
                  for r, bufs in data["roots"].items()}
        difference = _first_difference("buffers of the", {r: b for r, b in ours.items() if b},
                                       theirs)
        if difference is not None:
            refuse(difference)
        if fresh:
            return
        store = pyro.get_param_store()
        tensors, constraints = store_tensors(), store_constraints()
        here = {n: _described(list(store[n].shape), t.dtype,
                              constraint_spec(constraints[n], n))
                for n, t in tensors.items()}
        saved = {n: _described(e["shape"], e["value"].dtype, e["constraint"])
                 for n, e in data["params"].items()}
        difference = _first_difference("param", here, saved)
        if difference is not None:
            refuse(difference)
        for name, module in self._bound_networks(data).items():
            difference = _first_difference(
                f"network {name!r}: parameter or buffer",
                _flat_layout(_network_layout(module)),
                _flat_layout(_saved_layout(data["networks"][name])))
            if difference is not None:
                refuse(difference)

    def _bound_networks(self, data: dict) -> dict[str, torch.nn.Module]:
        return {n: m for n, m in self.watcher.modules.items()
                if n in data["networks"] and self._is_bound(n, m)}

    @staticmethod
    def _placed(data: dict, where: str, map_location) -> dict[str, torch.Tensor]:
        """The params' values on their devices (the one saved, or as ``map_location``
        put them), leaves with the saved ``requires_grad``."""
        values = {}
        for name, entry in data["params"].items():
            value = entry["value"]
            if map_location is None:
                device = torch.device(entry.get("device", "cpu"))
                if device.type == "cuda" and not torch.cuda.is_available():
                    raise CheckpointMismatchError(
                        f"{where}: param {name!r} was on {device}, which this process does "
                        "not have; load with map_location='cpu'")
                value = value.to(device)
            values[name] = value.detach().requires_grad_(bool(entry.get("requires_grad")))
        return values

    def _load_optimizer(self, states: dict) -> None:
        """Each param's optimizer state: into its torch optimizer (in place when the
        state has the same tensors, so a compiled step keeps reading them), or waiting
        for its first step; a param's optimizer with no saved state starts afresh."""
        optim = self.svi.optim
        objs = per_param_optimizers(optim)
        tensors = store_tensors()
        by_tensor = {id(t): n for n, t in tensors.items()}
        for param in list(objs):
            name = by_tensor.get(id(param))
            state = states.get(name) if name is not None else None
            if state is None:
                del objs[param]
                optim.grad_clip.pop(param, None)
            elif not _copy_optimizer_state(objs[param], state):
                if is_scheduler(objs[param]):
                    objs[param].load_state_dict(state["scheduler"])
                    objs[param].optimizer.load_state_dict(state["optimizer"])
                else:
                    objs[param].load_state_dict(state)
        bound = {by_tensor.get(id(p)) for p in objs}
        pending = pending_optim_states(optim)
        pending.clear()
        pending.update({n: s for n, s in states.items() if n not in bound})

    def _undo_of(self, fresh: bool, data: dict) -> Callable | None:
        """After a load into an empty store: how to put back what it changes."""
        if not fresh:
            return None
        svi = self.svi
        before = (random_state(), svi.step_count, svi.losses, svi.stop_reason,
                  dict(pending_optim_states(svi.optim)))

        def undo() -> None:
            store = pyro.get_param_store()
            for name in data["params"]:
                if name in store_tensors():
                    del store[name]
            rng, svi.step_count, svi.losses, svi.stop_reason, pending = before
            states = pending_optim_states(svi.optim)
            states.clear()
            states.update(pending)
            set_random_state(rng)
            with torch.no_grad():
                for tensor, value in reversed(self._overwritten):
                    tensor.copy_(value)
            self.pending, self.unverified, self._undo, self._overwritten = {}, None, None, []

        return undo


def _optimizer_states(optim: pyro.optim.PyroOptim) -> dict:
    """``{param name: state_dict}`` of each param's torch optimizer (a scheduler's as
    ``{"scheduler": ..., "optimizer": ...}``, as Pyro's ``get_state``), for the params
    still in the store."""
    store = pyro.get_param_store()
    states = {}
    for param, optimizer in per_param_optimizers(optim).items():
        name = store.param_name(param)
        if name is None:
            continue
        states[name] = ({"scheduler": optimizer.state_dict(),
                         "optimizer": optimizer.optimizer.state_dict()}
                        if is_scheduler(optimizer) else optimizer.state_dict())
    return states


def _described(shape: list, dtype: torch.dtype, spec: dict) -> str:
    return f"shape {shape}, {str(dtype).removeprefix('torch.')}, {describe_spec(spec)}"


def _flat_layout(layout: dict) -> dict:
    return {**{f"parameter {p}": s for p, s in layout["params"].items()},
            **{f"buffer {p}": s for p, s in layout["buffers"].items()}}


def _copy_optimizer_state(optimizer, saved: dict) -> bool:
    """Copy ``saved`` (a one-param torch optimizer's ``state_dict``) into ``optimizer``'s
    own state tensors and hyper-parameters; False (nothing changed) when the state's
    entries, shapes or dtypes differ, or it is a scheduler's."""
    if is_scheduler(optimizer) or "state" not in saved or len(optimizer.param_groups) != 1:
        return False
    (group,) = optimizer.param_groups
    (param,) = group["params"]
    current = optimizer.state.get(param, {})
    new = saved["state"].get(0, {})
    if set(current) != set(new) or len(saved.get("param_groups", ())) != 1:
        return False
    for key, value in new.items():
        here = current[key]
        if torch.is_tensor(here) != torch.is_tensor(value) or (
                torch.is_tensor(here) and (here.shape != value.shape
                                           or here.dtype != value.dtype)):
            return False
    with torch.no_grad():
        for key, value in new.items():
            if torch.is_tensor(value):
                current[key].copy_(value)
            else:
                current[key] = value
    group.update({k: v for k, v in saved["param_groups"][0].items() if k != "params"})
    return True
