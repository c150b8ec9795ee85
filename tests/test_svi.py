"""SVI: convergence, parity of whole runs with Pyro's SVI, custom losses, TracePosterior."""

import copy
import math

import pyro
import pyro.distributions as dist
import pyro.infer
import pyro.optim
import pytest
import torch
from pyro.distributions import constraints
from svi_runs import assert_same_run, run_svi

import pyro_svi_ext
from compat_matrix.catalogue import pick
from pyro_svi_ext import SVI, Trace_ELBO


def conjugate_normal(data, prior_scale=2.0, noise=1.0):
    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, prior_scale))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(mu, noise), obs=data)

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    precision = 1 / prior_scale**2 + len(data) / noise**2
    exact_mean = (data.sum() / noise**2) / precision
    return model, guide, float(exact_mean), 1 / math.sqrt(precision)


def test_conjugate_normal_converges_to_exact_posterior():
    """Tolerance: 2% of the posterior sd on the mean, 5% relative on the scale, after
    3000 Adam steps with 8 particles (Monte Carlo noise at the end is ~1% of the sd)."""
    torch.manual_seed(0)
    data = 1.5 + torch.randn(20)
    model, guide, exact_mean, exact_sd = conjugate_normal(data)
    pyro.set_rng_seed(1)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.999}),
              Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1))
    for _ in range(3000):
        svi.step(data)
    loc = pyro.param("loc").item()
    scale = pyro.param("scale").item()
    assert abs(loc - exact_mean) < 0.02 * exact_sd, (loc, exact_mean)
    assert abs(scale - exact_sd) < 0.05 * exact_sd, (scale, exact_sd)


OPTIMS = {
    "adam": lambda: pyro.optim.Adam({"lr": 0.05}),
    "sgd_momentum": lambda: pyro.optim.SGD({"lr": 0.01, "momentum": 0.9}),
    "clipped_adam": lambda: pyro.optim.ClippedAdam({"lr": 0.05, "clip_norm": 1.0}),
    "per_param_args": lambda: pyro.optim.Adam(
        lambda name, param: {"lr": 0.1 if "loc" in name else 0.01}),
    "adam_grad_clip": lambda: pyro.optim.Adam({"lr": 0.05}, {"clip_norm": 0.5}),
    "adamw": lambda: pyro.optim.AdamW({"lr": 0.05, "weight_decay": 0.1}),
    "rmsprop_centered": lambda: pyro.optim.RMSprop({"lr": 0.01, "centered": True}),
}


@pytest.mark.parametrize("optim", sorted(OPTIMS))
@pytest.mark.parametrize("case", pick("single_site", "to_event", "plate", "nested_plates",
                                      "subsampled_plate", "nonreparam_global",
                                      "nonreparam_in_plate", "auto_normal", "auto_delta"),
                         ids=repr)
def test_svi_run_matches_pyro_svi(case, optim):
    """Same draws, same optimizer: the whole trajectory (losses, params, optimizer
    state) equals Pyro's SVI + Trace_ELBO."""
    ours = run_svi(Trace_ELBO(**case.elbo_kwargs), case, OPTIMS[optim](), steps=15)
    theirs = run_svi(pyro.infer.Trace_ELBO(**case.elbo_kwargs), case, OPTIMS[optim](),
                     steps=15, svi_cls=pyro.infer.SVI)
    assert_same_run(ours, theirs)


def _params_after(svi_cls, elbo, run) -> dict:
    """The param store after ``run(optim, steps)`` on the "plate" case, where
    ``steps(n)`` takes ``n`` SVI steps with Adam(lr=0.05)."""
    (case,) = pick("plate")
    pyro.clear_param_store()
    model, guide, args = case.build()
    pyro.set_rng_seed(0)
    optim = pyro.optim.Adam({"lr": 0.05})
    svi = svi_cls(model, guide, optim, elbo)

    def steps(n: int) -> None:
        for _ in range(n):
            svi.step(*args)

    run(optim, steps)
    return _snapshot()


def _snapshot() -> dict:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_hand_edited_learning_rates_are_honoured():
    """Setting lr on the per-param optimizers (manual decay) takes effect at once."""
    frozen = {}

    def run(optim, steps):
        steps(3)
        for opt in optim.optim_objs.values():
            opt.param_groups[0]["lr"] = 0.0
        frozen.update(_snapshot())
        steps(3)

    for svi_cls, elbo in ((SVI, Trace_ELBO()), (pyro.infer.SVI, pyro.infer.Trace_ELBO())):
        after = _params_after(svi_cls, elbo, run)
        assert after.keys() == frozen.keys()
        for k, v in after.items():
            torch.testing.assert_close(v, frozen[k], rtol=0, atol=0)


def test_an_optimizer_state_loaded_by_hand_mid_run_is_used_from_the_next_step():
    """Rewinding each per-param optimizer to a saved ``state_dict`` (a checkpoint) takes
    effect at once, as in Pyro: the next steps read the loaded moments, not the ones
    the fused step kept from before."""

    def run(optim, steps):
        steps(3)
        saved = {p: copy.deepcopy(o.state_dict()) for p, o in optim.optim_objs.items()}
        steps(3)
        for p, o in optim.optim_objs.items():
            o.load_state_dict(saved[p])
        steps(3)

    ours = _params_after(SVI, Trace_ELBO(), run)
    theirs = _params_after(pyro.infer.SVI, pyro.infer.Trace_ELBO(), run)
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-6, atol=1e-7)


def test_a_pyro_loss_that_reports_inf_by_design_trains_as_under_pyros_svi():
    """Pyro's TraceTailAdaptive_ELBO returns ``inf`` as its loss (it computes only a
    surrogate): under validation the plugin's SVI neither raises nor skips the update
    for a loss that is not its own, so params move exactly as under Pyro's SVI."""
    from pyro.infer.trace_tail_adaptive_elbo import TraceTailAdaptive_ELBO

    model, guide, _, _ = conjugate_normal(torch.tensor([0.9, 1.4, 1.1]))
    finals = []
    for svi_cls in (SVI, pyro.infer.SVI):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        elbo = TraceTailAdaptive_ELBO(vectorize_particles=True, num_particles=4)
        svi = svi_cls(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
        losses = [svi.step(torch.tensor([0.9, 1.4, 1.1])) for _ in range(3)]
        assert losses == [math.inf] * 3
        finals.append(_snapshot())
    assert finals[0]["loc"] != 0.0
    for k in finals[1]:
        torch.testing.assert_close(finals[0][k], finals[1][k], rtol=1e-6, atol=1e-7)


def test_an_overridden_loss_and_grads_is_called():
    calls = []

    class CountingELBO(Trace_ELBO):
        def loss_and_grads(self, model, guide, *args, **kwargs):
            calls.append(1)
            return super().loss_and_grads(model, guide, *args, **kwargs)

    model, guide, _, _ = conjugate_normal(torch.ones(3))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), CountingELBO())
    svi.step(torch.ones(3))
    svi.step(torch.ones(3))
    assert calls == [1, 1]
    assert pyro.param("loc").item() != 0.0


def test_optim_must_be_a_pyro_optim():
    model, guide, _, _ = conjugate_normal(torch.zeros(3))
    with pytest.raises(ValueError, match=r"pyro\.optim\.PyroOptim"):
        SVI(model, guide, torch.optim.Adam, Trace_ELBO())


def test_custom_callable_loss_is_optimized():
    data = torch.full((10,), 3.0)
    model, guide, exact_mean, _ = conjugate_normal(data, prior_scale=100.0)
    calls = []

    def loss(model, guide, *args):
        calls.append(1)
        return Trace_ELBO().differentiable_loss(model, guide, *args)

    pyro.set_rng_seed(0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), loss)
    first = svi.step(data)
    for _ in range(400):
        last = svi.step(data)
    assert isinstance(first, float) and len(calls) == 401
    assert last < first
    assert abs(pyro.param("loc").item() - exact_mean) < 0.15


def test_custom_loss_and_grads_is_used():
    data = torch.zeros(3)
    model, guide, _, _ = conjugate_normal(data)
    seen = []

    def loss_and_grads(model, guide, *args):
        value = Trace_ELBO().differentiable_loss(model, guide, *args)
        value.backward()
        seen.append(value.item())
        return value

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO().loss, loss_and_grads)
    out = svi.step(data)
    assert seen == [out]
    assert pyro.param("loc").item() != 0.0  # the step moved the param


def test_evaluate_loss_takes_no_gradient():
    data = torch.ones(4)
    model, guide, _, _ = conjugate_normal(data)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO(num_particles=50))
    pyro.set_rng_seed(0)
    value = svi.evaluate_loss(data)
    assert isinstance(value, float)
    assert all(p.grad is None for _, p in pyro.get_param_store().named_parameters())
    pyro.set_rng_seed(0)
    assert value == pytest.approx(Trace_ELBO(num_particles=50).loss(model, guide, data))


def test_run_takes_steps_then_collects_traces():
    data = torch.full((5,), 2.0)
    model, guide, _, _ = conjugate_normal(data)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO(), num_samples=7,
              num_steps=30)
    assert svi.run(data) is svi
    assert len(svi) == 7 and len(svi.log_weights) == 7
    assert pyro.param("loc").item() > 0.5  # 30 steps toward the posterior mean (~1.9)
    for trace in svi:
        assert trace.nodes["obs"]["is_observed"]
        assert trace.nodes["mu"]["value"].shape == ()
    marginal = pyro.infer.EmpiricalMarginal(svi, sites="mu")  # Pyro's own reader
    assert marginal.sample().shape == ()


def test_pyro_accepts_our_elbo_and_trace_posterior():
    assert isinstance(Trace_ELBO(), pyro.infer.ELBO)
    assert issubclass(pyro_svi_ext.TracePosterior, pyro.infer.abstract_infer.TracePosterior)
    data = torch.ones(3)
    model, guide, _, _ = conjugate_normal(data)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    assert isinstance(svi.step(data), float)


def test_elbo_module_trains_with_a_torch_optimizer():
    data = torch.full((10,), 3.0)
    model, guide, exact_mean, _ = conjugate_normal(data, prior_scale=100.0)
    guide(data)  # create the params
    elbo_module = Trace_ELBO(num_particles=4)(model, guide)
    assert isinstance(elbo_module, torch.nn.Module)
    params = [p for _, p in pyro.get_param_store().named_parameters()]
    opt = torch.optim.Adam(params, lr=0.1)
    pyro.set_rng_seed(0)
    for _ in range(300):
        opt.zero_grad()
        loss = elbo_module(data)
        loss.backward()
        opt.step()
    assert loss.dim() == 0
    assert abs(pyro.param("loc").item() - exact_mean) < 0.1
