"""One multi-tensor optimizer step for all params of a ``pyro.optim.PyroOptim``.

A ``PyroOptim`` keeps one torch optimizer per parameter and steps them one by one;
with many small params that loop costs more than the arithmetic. :class:`FusedStep`
steps all params that share hyper-parameters with a single ``foreach`` torch optimizer
whose per-param state *is* the per-param optimizers' state (the same dict objects), so
``optim.get_state()``, ``save`` and ``load`` see every update, and the parameter values
equal the per-param loop's.

It falls back to the ``PyroOptim``'s own loop for: optimizers it does not know (e.g.
``ClippedAdam``), LR schedulers, gradient clipping, and a param's first step (which is
where ``PyroOptim`` creates that param's optimizer and loads saved state).
"""

from __future__ import annotations

import inspect

import pyro.optim
import torch

from pyro_svi_ext.pyro_compat import clip_args, optim_constructor, per_param_optimizers

FUSABLE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.RMSprop,
           torch.optim.Adagrad, torch.optim.Adamax)
_NOT_HYPER = ("params", "foreach", "fused", "differentiable", "capturable")


class FusedStep:
    """Callable ``step(params)`` with the semantics of ``optim(params)``."""

    def __init__(self, optim: pyro.optim.PyroOptim):
        self.optim = optim
        self.fusable = (
            type(optim) is pyro.optim.PyroOptim and optim_constructor(optim) in FUSABLE
        )
        self._key: tuple | None = None
        self._hypers: list[dict] = []
        self._fused: list[torch.optim.Optimizer] = []
        # (params, their optimizers, state objects, param groups) of the last fused step
        self._seen: tuple | None = None
        accepted = inspect.signature(optim_constructor(optim)).parameters
        self._accepted = set(accepted) - {"params"}

    def __call__(self, params: list[torch.Tensor]) -> None:
        optim = self.optim
        objs = per_param_optimizers(optim)
        if self._unchanged(params, objs):
            for fused in self._fused:
                fused.step()
            return
        self._seen = None
        if (
            not self.fusable
            or len(params) < 2
            or any(p not in objs or clip_args(optim, p) is not None for p in params)
        ):
            optim(params)
            return
        # rebuild when a param, its optimizer or that optimizer's state object changed
        # (e.g. load_state_dict), or when its hyper-parameters were edited by hand
        key = tuple((id(p), id(objs[p]), id(objs[p].state)) for p in params)
        hypers = [self._hyper(objs[p]) for p in params]
        if key != self._key or hypers != self._hypers:
            self._fused = self._build(params, hypers)
            self._key, self._hypers = key, hypers
        per_param = [objs[p] for p in params]
        self._seen = (list(params), per_param, [o.state for o in per_param],
                      [dict(o.param_groups[0]) for o in per_param])
        for fused in self._fused:
            fused.step()

    def _unchanged(self, params: list[torch.Tensor], objs: dict) -> bool:
        """Whether ``params``, their optimizers, state objects and param groups are those
        of the last fused step: one pass of identity checks and a dict comparison per
        param, instead of rebuilding the key and the hyper-parameters (BLR, 6 params:
        the check fell from ~25 to ~8 us a step, cProfile)."""
        seen = self._seen
        if seen is None or len(params) != len(seen[0]):
            return False
        try:
            for p, q, obj, state, group in zip(params, *seen, strict=True):
                if p is not q or objs.get(p) is not obj or obj.state is not state \
                        or obj.param_groups[0] != group:
                    return False
        except (RuntimeError, ValueError):  # a hyper-parameter replaced by a tensor
            return False
        return True

    def _hyper(self, optimizer: torch.optim.Optimizer) -> dict:
        (group,) = optimizer.param_groups
        return {k: v for k, v in group.items() if k in self._accepted and k not in _NOT_HYPER}

    def _build(self, params: list[torch.Tensor], hypers: list[dict]):
        objs = per_param_optimizers(self.optim)
        groups: dict[str, tuple[dict, list]] = {}
        for p, hyper in zip(params, hypers, strict=True):
            groups.setdefault(repr(sorted(hyper.items())), (hyper, []))[1].append(p)
        fused = []
        for hyper, members in groups.values():
            opt = optim_constructor(self.optim)(members, foreach=True, **hyper)
            for p in members:
                opt.state[p] = objs[p].state[p]  # share, do not copy
            fused.append(opt)
        return fused
