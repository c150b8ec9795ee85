"""Run one estimator on a case from a fixed seed and collect loss and gradients."""

from __future__ import annotations

import pyro
import torch


def run_loss_and_grads(elbo, case, seed: int = 0, method: str = "loss_and_grads"):
    """Fresh param store, build the case, seed, run ``method``; return (loss, {name: grad})."""
    pyro.clear_param_store()
    model, guide, args = case.build()
    pyro.set_rng_seed(seed)
    if method == "differentiable_loss":
        loss_t = elbo.differentiable_loss(model, guide, *args)
        params = dict(pyro.get_param_store().named_parameters())
        grads = torch.autograd.grad(loss_t, list(params.values()), allow_unused=True)
        return float(loss_t.detach()), {
            n: g for n, g in zip(params, grads, strict=True) if g is not None
        }
    loss = getattr(elbo, method)(model, guide, *args)
    grads = {
        name: p.grad.clone()
        for name, p in pyro.get_param_store().named_parameters()
        if p.grad is not None
    }
    return float(loss), grads


def assert_same_loss_and_grads(ours, theirs, rtol=1e-5, atol=1e-6):
    loss_o, grads_o = ours
    loss_t, grads_t = theirs
    assert abs(loss_o - loss_t) <= atol + rtol * abs(loss_t), (loss_o, loss_t)
    assert set(grads_o) == set(grads_t), (sorted(grads_o), sorted(grads_t))
    for name in grads_t:
        torch.testing.assert_close(grads_o[name], grads_t[name], rtol=rtol, atol=atol,
                                   msg=lambda m, n=name: f"grad of {n}: {m}")
