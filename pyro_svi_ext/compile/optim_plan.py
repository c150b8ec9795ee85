"""The host side of running a ``pyro.optim.PyroOptim``'s update inside a compiled step.

A :class:`PyroOptim` keeps one torch optimizer per parameter. An :class:`OptimPlan` reads
each one's hyper-parameters and state tensors (``exp_avg``, ``step``, ...) and lays them
out as graph inputs; the traced step computes the new values with
:mod:`pyro_svi_ext.kernels.optim_updates` and the step copies them back into the very
same state tensors, so ``optim.get_state()``, ``save``/``load`` and a later eager step
see every update.

Supported: ``torch.optim.Adam``, ``AdamW`` and ``SGD`` (through ``pyro.optim.Adam`` /
``AdamW`` / ``SGD``) and Pyro's ``ClippedAdam``, with per-parameter arguments. Anything
else (other optimizers, ``amsgrad``, ``fused``/``capturable``, gradient clipping
arguments, LR schedulers, a tensor ``lr``) makes :func:`unsupported_reason` say why, and
the step keeps the eager update.
"""

from __future__ import annotations

import operator

import pyro.optim
import torch
from pyro.optim.clipped_adam import ClippedAdam

from pyro_svi_ext.kernels.optim_updates import adam_update, clipped_adam_update, sgd_update
from pyro_svi_ext.pyro_compat import clip_args, optim_constructor, per_param_optimizers

_KINDS = {torch.optim.Adam: "adam", torch.optim.AdamW: "adam", torch.optim.SGD: "sgd",
          ClippedAdam: "clipped_adam"}
# group entries that must keep their value for a compiled update to stay valid ("lr" is
# an input of the graph, refreshed when it changes)
_STATIC = {
    "adam": ("betas", "eps", "weight_decay", "decoupled_weight_decay", "maximize"),
    "clipped_adam": ("betas", "eps", "weight_decay", "clip_norm", "lrd",
                     "centered_variance"),
    "sgd": ("momentum", "dampening", "weight_decay", "nesterov", "maximize"),
}
_STATE_OF = operator.attrgetter("state")
_REFUSED = ("amsgrad", "fused", "capturable", "differentiable")
#: reasons that last only until the eager step has created the optimizer's state
NOT_STEPPED = "a param has not been stepped yet"
NOT_INITIALIZED = "optimizer state not initialized"
TRANSIENT = (NOT_STEPPED, NOT_INITIALIZED)


def unsupported_reason(optim: pyro.optim.PyroOptim, params: list[torch.Tensor]) -> str | None:
    """Why ``optim``'s update for ``params`` cannot run inside a compiled step, or None."""
    if type(optim) is not pyro.optim.PyroOptim:
        return f"{type(optim).__name__} (LR schedulers step on the host)"
    kind = _KINDS.get(optim_constructor(optim))
    if kind is None:
        return f"optimizer {optim_constructor(optim).__name__} has no compiled update"
    optimizers = per_param_optimizers(optim)
    for p in params:
        optimizer = optimizers.get(p)
        if optimizer is None:
            return NOT_STEPPED
        if clip_args(optim, p) is not None:
            return "gradient clipping arguments (clip_args)"
        (group,) = optimizer.param_groups
        if any(group.get(k) for k in _REFUSED):
            return f"optimizer options {[k for k in _REFUSED if group.get(k)]}"
        if not isinstance(group["lr"], float | int):
            return "a tensor learning rate"
        state = optimizer.state.get(p) or {}
        needed = ("momentum_buffer",) if kind == "sgd" and group["momentum"] != 0 else (
            () if kind == "sgd" else ("exp_avg", "exp_avg_sq", "step"))
        if any(state.get(k) is None for k in needed):
            return NOT_INITIALIZED
    return None


class _Slot:
    """One param's optimizer, its static hyper-parameters and its state tensors, all of
    which the update rewrites (the learning rate is the plan's, shared between params)."""

    def __init__(self, optimizer: torch.optim.Optimizer, p: torch.Tensor, kind: str):
        self.optimizer = optimizer
        self.kind = kind
        (self.group,) = optimizer.param_groups
        self.state = optimizer.state[p]
        keys = [k for k in _STATIC[kind] if k in self.group]
        self.static = {k: self.group[k] for k in keys}
        state = self.state
        if kind == "adam":
            if state["step"].device != p.device:  # step counts live beside their param
                state["step"] = state["step"].to(p.device)
            self.inputs = [state["exp_avg"], state["exp_avg_sq"], state["step"]]
        elif kind == "clipped_adam":  # pyro keeps an int step: a shadow count on device
            self.count = state["step"]
            step = torch.tensor(float(self.count), dtype=torch.float64, device=p.device)
            self.inputs = [state["exp_avg"], state["exp_avg_sq"], step]
        else:
            buffer = state.get("momentum_buffer") if self.group["momentum"] != 0 else None
            self.inputs = [] if buffer is None else [buffer]
        self.frozen = tuple(sorted(self.static.items()))

    def update(self, p, grad, inputs: list, lr) -> tuple:
        """Traced: ``(new param, new state inputs)`` for this step's learning rate
        ``lr``; a param without a gradient keeps its values (its eager optimizer skips
        it)."""
        if grad is None:
            return p, inputs
        h = self.static
        if self.kind == "sgd":
            new_p, buffer = sgd_update(
                p, grad, inputs[0] if inputs else None, lr, momentum=h["momentum"],
                dampening=h["dampening"], weight_decay=h["weight_decay"],
                nesterov=bool(h["nesterov"]), maximize=bool(h.get("maximize", False)))
            return new_p, [buffer] if inputs else []
        (beta1, beta2), common = h["betas"], {"eps": h["eps"], "weight_decay": h["weight_decay"]}
        if self.kind == "adam":
            new = adam_update(p, grad, *inputs, lr, beta1=beta1, beta2=beta2, **common,
                              decoupled_weight_decay=bool(h.get("decoupled_weight_decay")),
                              maximize=bool(h.get("maximize", False)))
        else:
            new = clipped_adam_update(p, grad, *inputs, lr, beta1=beta1, beta2=beta2, **common,
                                      clip_norm=h["clip_norm"],
                                      centered_variance=bool(h.get("centered_variance")))
        return new[0], list(new[1:])


class OptimPlan:
    """Graph inputs and traced update for ``optim``'s step of ``params`` (which must
    pass :func:`unsupported_reason`).

    Inputs: every slot's state tensors, then one float64 learning-rate tensor per
    distinct learning rate. Written: all of them but the learning rates, which only
    ClippedAdam rewrites (its ``lrd`` decay, applied before the update as Pyro does).
    """

    def __init__(self, optim: pyro.optim.PyroOptim, params: list[torch.Tensor]):
        kind = _KINDS[optim_constructor(optim)]
        self.optim = optim
        self.kind = kind
        self.params = list(params)
        self.slots = [_Slot(per_param_optimizers(optim)[p], p, kind) for p in params]
        shared: dict = {}
        for p, slot in zip(params, self.slots, strict=True):
            lr = slot.group["lr"]
            share = (lr, p.device, slot.static.get("lrd"))
            if share not in shared:
                shared[share] = (len(shared), slot.static.get("lrd"),
                                 torch.tensor(float(lr), dtype=torch.float64, device=p.device))
            slot.lr_index = shared[share][0]
        self.lrd = [v[1] for v in shared.values()]
        self.lrs = [v[2] for v in shared.values()]
        state = [t for s in self.slots for t in s.inputs]
        self.inputs = state + self.lrs
        # the written tensors lead the inputs: all state, and the lrs only for ClippedAdam
        self.written = state + (self.lrs if kind == "clipped_adam" else [])
        self.key = (kind, tuple((s.frozen, len(s.inputs), s.lr_index) for s in self.slots),
                    len(self.lrs))
        # what ``current`` compares on every step: one C-level pass per list
        self._optimizers = [s.optimizer for s in self.slots]
        # the PyroOptim's dict of per-param optimizers as last checked: Pyro adds an
        # entry for a new param and a reload removes them, so the same dict of the same
        # length holds the same optimizers
        self._objs = per_param_optimizers(optim)
        self._n_objs = len(self._objs)
        self._state_dicts = [s.optimizer.state for s in self.slots]
        watched = [k for k in _STATIC[kind] if all(k in s.group for s in self.slots)]
        self._watch = operator.itemgetter("lr", *watched)
        self._watched = [self._watch(s.group) for s in self.slots]
        self._counts = [s.count for s in self.slots] if kind == "clipped_adam" else None

    def current(self, optim: pyro.optim.PyroOptim, params: list[torch.Tensor]) -> bool:
        """Cheap per-step check that the plan still describes ``optim`` and ``params``:
        the same param tensors, torch optimizers, state dicts, learning rates and static
        hyper-parameters (a learning rate changed on the host makes a new plan: same
        graph, new inputs)."""
        if optim is not self.optim or len(params) != len(self.params):
            return False
        if not all(map(operator.is_, params, self.params)):
            return False
        objs = per_param_optimizers(optim)
        if objs is not self._objs or len(objs) != self._n_objs:
            # entries added or removed (a reload clears them): look each param up (a
            # tensor key hashes in Python, 0.25 us a param: not on every step)
            if not all(map(operator.is_, map(objs.get, params), self._optimizers)):
                return False
            self._objs, self._n_objs = objs, len(objs)
        optimizers = self._optimizers
        # loading a torch optimizer's state replaces its ``state`` and ``param_groups``
        if not all(map(operator.is_, map(_STATE_OF, optimizers), self._state_dicts)):
            return False
        groups = [o.param_groups[0] for o in optimizers]
        if list(map(self._watch, groups)) != self._watched:
            return False
        return self._counts is None or [s.state["step"] for s in self.slots] == self._counts

    def update(self, params: list, grads: list, inputs: list) -> tuple[list, list]:
        """Traced: new params and new written inputs (in :attr:`written` order)."""
        lrs = inputs[len(inputs) - len(self.lrs):]
        if self.kind == "clipped_adam":
            lrs = [lr * lrd for lr, lrd in zip(lrs, self.lrd, strict=True)]
        new_params, new_state, at = [], [], 0
        for p, g, slot in zip(params, grads, self.slots, strict=True):
            new_p, state = slot.update(p, g, inputs[at:at + len(slot.inputs)],
                                       lrs[slot.lr_index])
            at += len(slot.inputs)
            new_params.append(new_p)
            new_state.extend(state)
        return new_params, new_state + (lrs if self.kind == "clipped_adam" else [])

    def after_step(self, had_grad: list[bool]) -> None:
        """Host bookkeeping the graph cannot do: ClippedAdam's int steps and float lrs."""
        if self.kind != "clipped_adam":
            return
        for slot, flag in zip(self.slots, had_grad, strict=True):
            slot.group["lr"] *= slot.group["lrd"]
            if flag:
                slot.state["step"] += 1
                slot.count = slot.state["step"]
        self._watched = [self._watch(s.group) for s in self.slots]
        self._counts = [s.count for s in self.slots]
