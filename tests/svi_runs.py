"""The suite's one SVI-run helper, and the one comparison of two runs."""

from __future__ import annotations

import copy
from typing import NamedTuple

import pyro
import pyro.optim
import pytest
import torch

from pyro_svi_ext import SVI


class SviRun(NamedTuple):
    """What ``steps`` SVI steps left: the losses, the param store, the optimizer state."""

    losses: list
    params: dict
    optim_state: dict


def run_svi(elbo, case, optim=None, steps: int = 5, seed: int = 0, svi_cls=SVI,
            edit=None) -> SviRun:
    """``steps`` steps of ``svi_cls(model, guide, optim, elbo)`` on a fresh build of
    ``case`` from ``seed`` (``optim`` default: Adam, lr 0.05); ``edit(i, optim)`` runs
    before step ``i``."""
    pyro.clear_param_store()
    model, guide, args = case.build()
    optim = optim or pyro.optim.Adam({"lr": 0.05})
    pyro.set_rng_seed(seed)
    svi = svi_cls(model, guide, optim, elbo)
    losses = []
    for i in range(steps):
        if edit is not None:
            edit(i, optim)
        losses.append(svi.step(*args))
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return SviRun(losses, params, copy.deepcopy(optim.get_state()))


def assert_same_run(ours: SviRun, theirs: SviRun, rtol: float = 1e-5, atol: float = 1e-6,
                    optimizer_state: bool = True) -> None:
    """Same losses, params and (unless told not to) optimizer state."""
    assert ours.losses == pytest.approx(theirs.losses, rel=rtol, abs=max(atol, 1e-5))
    assert ours.params.keys() == theirs.params.keys()
    for name in theirs.params:
        torch.testing.assert_close(ours.params[name], theirs.params[name], rtol=rtol,
                                   atol=atol)
    if not optimizer_state:
        return
    assert ours.optim_state.keys() == theirs.optim_state.keys()
    for name, state in theirs.optim_state.items():
        for key, value in state["state"][0].items():
            got = ours.optim_state[name]["state"][0][key]
            if torch.is_tensor(value):
                torch.testing.assert_close(got.cpu(), value.cpu(), rtol=rtol, atol=atol)
            else:
                assert got == value, (name, key)
        assert ours.optim_state[name]["param_groups"] == state["param_groups"]


def compiled_step(elbo):
    """The one compiled step a ``Jit*`` estimator has made."""
    (step,) = elbo._steps.values()
    return step
