"""A failing step changes nothing: param store, optimizer state and grads as before."""

import warnings

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.distributions import constraints

from pyro_svi_ext import SVI, NonFiniteLossError, Trace_ELBO


def model(data):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)


def guide(data):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def snapshot(optim):
    store = pyro.get_param_store()
    values = {k: v.detach().clone() for k, v in store.items()}
    grads = {k: None if p.grad is None else p.grad.clone()
             for k, p in store.named_parameters()}
    state = {k: {kk: (vv.clone() if torch.is_tensor(vv) else vv)
                 for kk, vv in s["state"].get(0, {}).items()}
             for k, s in optim.get_state().items()}
    return values, grads, state


def assert_same_snapshot(a, b):
    for part_a, part_b in zip(a, b, strict=True):
        assert part_a.keys() == part_b.keys()
        for key in part_a:
            va, vb = part_a[key], part_b[key]
            if isinstance(va, dict):
                assert va.keys() == vb.keys()
                for k in va:
                    torch.testing.assert_close(va[k], vb[k], rtol=0, atol=0)
            elif va is None:
                assert vb is None
            else:
                torch.testing.assert_close(va, vb, rtol=0, atol=0)


def trained_svi():
    optim = pyro.optim.Adam({"lr": 0.1})
    svi = SVI(model, guide, optim, Trace_ELBO())
    for _ in range(3):
        svi.step(torch.ones(4))
    return svi, optim


def test_nonfinite_loss_raises_naming_the_site_and_changes_nothing():
    svi, optim = trained_svi()
    before = snapshot(optim)
    bad = torch.tensor([1.0, float("inf"), 0.0, 2.0])
    with pytest.raises(NonFiniteLossError, match="model:obs") as info:
        svi.step(bad)
    assert info.value.sites == ["model:obs (log_prob sum -inf)"]
    assert_same_snapshot(before, snapshot(optim))
    svi.step(torch.ones(4))  # still usable
    assert pyro.param("loc").item() != before[0]["loc"].item()


def test_model_error_names_the_site_and_changes_nothing():
    def bad_model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Bernoulli(logits=mu), obs=data)  # 3.0 not in support

    _, optim = trained_svi()
    before = snapshot(optim)
    svi_bad = SVI(bad_model, guide, optim, Trace_ELBO())
    with pytest.raises(ValueError, match="Error while computing log_prob at site 'obs'"):
        svi_bad.step(torch.tensor([0.0, 3.0, 1.0, 0.0]))
    assert_same_snapshot(before, snapshot(optim))


def test_exception_inside_the_model_changes_nothing():
    def crashing_model(data):
        model(data)
        raise RuntimeError("user bug")

    _, optim = trained_svi()
    before = snapshot(optim)
    with pytest.raises(RuntimeError, match="user bug"):
        SVI(crashing_model, guide, optim, Trace_ELBO()).step(torch.ones(4))
    assert_same_snapshot(before, snapshot(optim))


def test_params_created_by_a_failed_first_step_are_removed():
    def guide_with_new_param(data):
        guide(data)
        pyro.param("extra", torch.tensor(1.0))
        raise ValueError("guide bug")

    _, optim = trained_svi()
    names = set(pyro.get_param_store().keys())
    with pytest.raises(ValueError, match="guide bug"):
        SVI(model, guide_with_new_param, optim, Trace_ELBO()).step(torch.ones(4))
    assert set(pyro.get_param_store().keys()) == names


def test_without_validation_a_nonfinite_loss_warns_like_pyro():
    svi, _ = trained_svi()
    pyro.enable_validation(False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = svi.step(torch.tensor([float("inf"), 0.0, 0.0, 0.0]))
    assert loss == float("inf")
    assert any("non-finite loss" in str(w.message) for w in caught)
