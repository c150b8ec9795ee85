"""An example of a user's test suite, run by ``pyro-svi-ext compat suite`` on several
sides (pyro version x implementation). Written against ``pyro.infer`` as users write
it; on an ``ours`` side the drop-in switch makes these names the plugin's classes.

Two tests pass everywhere; ``test_equalize_ties_scales`` needs ``poutine.equalize``
(new in pyro 1.9.0); ``test_infinite_loss_is_returned`` relies on Pyro's SVI returning an
infinite loss, where the plugin's SVI raises under validation (its ``nonfinite``
policy, a documented difference).
"""

import math

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO


def model(x, y):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(w * x, 0.1), obs=y)


def guide(x, y):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(0.5), constraint=constraints.positive)
    pyro.sample("w", dist.Normal(loc, scale))


def test_regression_recovers_the_slope():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.linspace(-1, 1, 50)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(300):
        svi.step(x, 0.8 * x)
    assert pyro.param("loc").item() == pytest.approx(0.8, abs=0.05)


def test_enumerated_mixture_loss_is_exact():
    data = torch.tensor([-2.0, 2.0])

    def mixture(data):
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(4.0 * z - 2.0, 1.0), obs=data)

    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(mixture, lambda data: None, data)
    per_point = math.log(0.5 * math.exp(dist.Normal(-2.0, 1.0).log_prob(torch.tensor(-2.0)))
                         + 0.5 * math.exp(dist.Normal(2.0, 1.0).log_prob(torch.tensor(-2.0))))
    assert loss == pytest.approx(-2 * per_point, rel=1e-5)


def test_equalize_ties_scales():
    def two_scales():
        pyro.sample("a_scale", dist.LogNormal(0.0, 1.0))
        pyro.sample("b_scale", dist.LogNormal(0.0, 1.0))

    trace = poutine.trace(poutine.equalize(two_scales, ".*_scale")).get_trace()
    assert trace.nodes["a_scale"]["value"] == trace.nodes["b_scale"]["value"]


def test_infinite_loss_is_returned():
    pyro.clear_param_store()

    def far_guide(x, y):
        loc = pyro.param("loc", torch.tensor(1e20))  # w ~ 1e20: log p(w) overflows
        pyro.sample("w", dist.Normal(loc, 1.0))

    x = torch.linspace(-1, 1, 5)
    svi = SVI(model, far_guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    assert svi.step(x, x) == math.inf
