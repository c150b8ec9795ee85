"""TraceGraph_ELBO: parity with Pyro's, baselines, variance reduction, recovery."""

import pyro
import pyro.distributions as dist
import pyro.infer
import pyro.optim
import pytest
import torch
from parity import assert_same_loss_and_grads, run_loss_and_grads
from pyro.distributions import constraints
from svi_runs import assert_same_run, run_svi

import pyro_svi_ext
from compat_matrix.catalogue import CASES, GRAPH_CASES, pick
from pyro_svi_ext import SVI, Trace_ELBO, TraceGraph_ELBO

ALL_CASES = GRAPH_CASES + CASES


@pytest.mark.parametrize("case", ALL_CASES, ids=repr)
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_grads_match_pyro(case, seed):
    ours = run_loss_and_grads(TraceGraph_ELBO(**case.elbo_kwargs), case, seed)
    theirs = run_loss_and_grads(pyro.infer.TraceGraph_ELBO(**case.elbo_kwargs), case, seed)
    assert theirs[1]
    assert_same_loss_and_grads(ours, theirs)


@pytest.mark.parametrize("case", GRAPH_CASES, ids=repr)
def test_loss_matches_pyro(case):
    ours, _ = run_loss_and_grads(TraceGraph_ELBO(**case.elbo_kwargs), case, 4, "loss")
    theirs, _ = run_loss_and_grads(pyro.infer.TraceGraph_ELBO(**case.elbo_kwargs), case, 4,
                                   "loss")
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("case", pick("baseline_decaying_average", "baseline_nn",
                                      "baseline_nn_and_average"), ids=repr)
def test_baselines_train_like_pyro_over_several_steps(case):
    """Decaying averages and neural baselines evolve as in Pyro (param store compared)."""
    ours = run_svi(TraceGraph_ELBO(), case, steps=12)
    theirs = run_svi(pyro.infer.TraceGraph_ELBO(), case, steps=12, svi_cls=pyro.infer.SVI)
    assert [k for k in theirs.params if "baseline" in k], "the case must create baselines"
    # Pyro's optimizer also holds (never-used) state for the averages, which it reads
    # with pyro.param inside SVI's param capture; the averages themselves must agree
    assert_same_run(ours, theirs, optimizer_state=False)


def _one_site(baseline):
    def model():
        pyro.sample("z", dist.Bernoulli(0.5))

    def guide():
        p = pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)
        pyro.sample("z", dist.Bernoulli(p), infer={"baseline": baseline})

    return model, guide


@pytest.mark.parametrize("baseline, message", [
    ({"use_decaying_avg": True}, r"site 'z': unknown baseline options \['use_decaying_avg'\]"),
    ({"nn_baseline": torch.nn.Linear(1, 1), "nn_baseline_input": torch.ones(1),
      "baseline_value": torch.tensor(0.0)}, "site 'z': use either nn_baseline or baseline_value"),
    ({"nn_baseline": torch.nn.Linear(1, 1)}, "site 'z': nn_baseline needs nn_baseline_input"),
    ({"use_decaying_avg_baseline": True, "baseline_beta": 1.5}, "site 'z': baseline_beta"),
    ({"baseline_value": torch.zeros(3)}, r"site 'z': baseline shape \(3,\) differs"),
])
def test_invalid_baselines_name_the_site(baseline, message):
    model, guide = _one_site(baseline)
    with pytest.raises(ValueError, match=message):
        TraceGraph_ELBO().loss_and_grads(model, guide)


def test_registered_under_its_names():
    assert pyro_svi_ext.get("tracegraph_elbo") is TraceGraph_ELBO
    assert pyro_svi_ext.get("TraceGraph_ELBO") is TraceGraph_ELBO
    assert isinstance(TraceGraph_ELBO(), pyro.infer.ELBO)


# --- variance reduction -------------------------------------------------------------

T = 6
X = torch.tensor([2.1, -0.3, 1.8, 0.2, 2.4, -0.1])


def _seq_model():
    for t in pyro.plate("time", T):
        z = pyro.sample(f"z_{t}", dist.Bernoulli(0.5))
        pyro.sample(f"x_{t}", dist.Normal(2.0 * z, 1.0), obs=X[t])


def _seq_guide(baseline=None):
    def guide():
        p = pyro.param("p", torch.full((T,), 0.5), constraint=constraints.unit_interval)
        for t in pyro.plate("time", T):
            infer = {"baseline": baseline} if baseline else {}
            pyro.sample(f"z_{t}", dist.Bernoulli(p[t]), infer=infer)

    return guide


def gradient_variance(elbo, guide, draws=500):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    grads = []
    for _ in range(draws):
        elbo.loss_and_grads(_seq_model, guide)
        param = pyro.param("p").unconstrained()
        grads.append(param.grad.clone())
        param.grad = None
    return torch.stack(grads).var(0).sum().item()


def test_dependency_tracking_and_baselines_reduce_gradient_variance():
    """Sequential plate of 6 Bernoulli latents, 500 draws each: Trace_ELBO weights each
    score by all 12 cost terms, TraceGraph_ELBO by the 2 its site feeds, and a
    decaying-average baseline centres those."""
    v_trace = gradient_variance(Trace_ELBO(), _seq_guide())
    v_graph = gradient_variance(TraceGraph_ELBO(), _seq_guide())
    v_base = gradient_variance(
        TraceGraph_ELBO(), _seq_guide({"use_decaying_avg_baseline": True, "baseline_beta": 0.9}))
    print(f"gradient variance: Trace_ELBO {v_trace:.3f}, TraceGraph_ELBO {v_graph:.3f}, "
          f"+ decaying baseline {v_base:.3f}")
    assert v_graph < 0.5 * v_trace
    assert v_base < 0.5 * v_graph


def test_svi_recovers_the_component_mean_of_a_bernoulli_mixture():
    """x_i = mu * z_i + noise(0.5), z_i ~ Bernoulli(0.3), true mu = 3. A point estimate
    of mu (model-side param) with a per-datum Bernoulli guide: |mu_hat - 3| < 0.15."""
    torch.manual_seed(0)
    n = 200
    z_true = torch.bernoulli(torch.full((n,), 0.3))
    data = 3.0 * z_true + 0.5 * torch.randn(n)

    def model(data):
        mu = pyro.param("mu", torch.tensor(1.0))
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(mu * z, 0.5), obs=data)

    def guide(data):
        probs = pyro.param("probs", torch.full((n,), 0.5), constraint=constraints.unit_interval)
        with pyro.plate("data", n):
            pyro.sample("z", dist.Bernoulli(probs),
                        infer={"baseline": {"use_decaying_avg_baseline": True}})

    pyro.set_rng_seed(0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), TraceGraph_ELBO())
    for _ in range(800):
        svi.step(data)
    assert abs(pyro.param("mu").item() - 3.0) < 0.15
    assignments = (pyro.param("probs") > 0.5).float()
    assert (assignments == z_true).float().mean() > 0.95
