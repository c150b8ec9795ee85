"""Optimizer updates as pure functions, for a compiled step to trace with its gradients.

Each function takes one parameter's tensors and returns their new values; nothing is
written in place. ``lr`` and ``step`` are 0-dim tensors (``lr`` float64, ``step`` the
number of updates taken so far, any float dtype) so that a traced graph reads them as
inputs instead of baking them in. Static hyper-parameters are Python numbers.

The arithmetic follows the eager optimizers it stands in for (``torch.optim.Adam`` /
``AdamW`` / ``SGD`` in their multi-tensor form, ``pyro.optim.ClippedAdam``) step for
step, so results agree to float rounding.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _bias_corrections(beta1: float, beta2: float, step: Tensor) -> tuple[Tensor, Tensor]:
    """``(1 - beta1^t, 1 - beta2^t)`` in float64 for the step count ``t`` (0-dim)."""
    t = step.to(torch.float64)
    return 1.0 - torch.pow(beta1, t), 1.0 - torch.pow(beta2, t)


def adam_update(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
                step: Tensor, lr: Tensor, *, beta1: float, beta2: float, eps: float,
                weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
                maximize: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Adam (or AdamW, ``decoupled_weight_decay=True``) update.

    ``param``, ``grad``, ``exp_avg``, ``exp_avg_sq``: same shape. Returns
    ``(param, exp_avg, exp_avg_sq, step)`` after the update (``step`` incremented).
    """
    step = step + 1
    if maximize:
        grad = -grad
    if weight_decay != 0:
        if decoupled_weight_decay:
            param = param * (1.0 - lr * weight_decay)
        else:
            grad = grad + weight_decay * param
    exp_avg = torch.lerp(exp_avg, grad, 1.0 - beta1)
    exp_avg_sq = exp_avg_sq * beta2 + (1.0 - beta2) * grad * grad
    bias1, bias2 = _bias_corrections(beta1, beta2, step)
    denom = exp_avg_sq.sqrt() / bias2.sqrt() + eps
    param = param + (-(lr / bias1)) * (exp_avg / denom)
    return param, exp_avg, exp_avg_sq, step


def clipped_adam_update(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
                        step: Tensor, lr: Tensor, *, beta1: float, beta2: float, eps: float,
                        weight_decay: float = 0.0, clip_norm: float = 10.0,
                        centered_variance: bool = False
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One update of Pyro's ``ClippedAdam``: gradients clamped to ``[-clip_norm,
    clip_norm]``, eps added outside the bias-corrected square root. ``lr`` is the
    learning rate of this step (after its ``lrd`` decay). Returns ``(param, exp_avg,
    exp_avg_sq, step)``."""
    step = step + 1
    grad = grad.clamp(-clip_norm, clip_norm)
    if weight_decay != 0:
        grad = grad + weight_decay * param
    exp_avg = exp_avg * beta1 + (1.0 - beta1) * grad
    spread = grad - exp_avg if centered_variance else grad
    exp_avg_sq = exp_avg_sq * beta2 + (1.0 - beta2) * spread * spread
    denom = exp_avg_sq.sqrt() + eps
    bias1, bias2 = _bias_corrections(beta1, beta2, step)
    param = param + (-(lr * bias2.sqrt() / bias1)) * (exp_avg / denom)
    return param, exp_avg, exp_avg_sq, step


def sgd_update(param: Tensor, grad: Tensor, momentum_buffer: Tensor | None, lr: Tensor, *,
               momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
               nesterov: bool = False, maximize: bool = False
               ) -> tuple[Tensor, Tensor | None]:
    """One SGD update; ``momentum_buffer`` is ``None`` when ``momentum == 0``. Returns
    ``(param, momentum_buffer)``."""
    if maximize:
        grad = -grad
    if weight_decay != 0:
        grad = grad + weight_decay * param
    if momentum != 0:
        momentum_buffer = momentum_buffer * momentum + (1.0 - dampening) * grad
        grad = grad + momentum * momentum_buffer if nesterov else momentum_buffer
    return param + (-lr) * grad, momentum_buffer
