"""An example of a user's own scenario module for ``pyro-svi-ext compat migrate``.

Each ``scenario_<name>`` function returns a :class:`compat_matrix.Scenario`: the model,
the guide, their arguments, the seed, the estimator and what else to compute. Call it
as, for example::

    pyro-svi-ext compat migrate my_scenarios.py --from 1.8.6 --to 1.9.2
    pyro-svi-ext compat migrate my_scenarios.py --from 1.9.2:pyro --to 1.9.2:ours
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from compat_matrix import Posterior, Scenario


def _regression_data():
    x = torch.linspace(-1.0, 1.0, 30)
    return x, 0.7 * x - 0.2 + 0.1 * torch.sin(7 * x)


def regression_model(x, y=None):
    slope = pyro.sample("slope", dist.Normal(0.0, 1.0))
    intercept = pyro.sample("intercept", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        return pyro.sample("y", dist.Normal(slope * x + intercept, 0.2), obs=y)


def regression_guide(x, y=None):
    for name in ("slope", "intercept"):
        loc = pyro.param(f"{name}_loc", torch.tensor(0.0))
        scale = pyro.param(f"{name}_scale", torch.tensor(0.5),
                           constraint=constraints.positive)
        pyro.sample(name, dist.Normal(loc, scale))


def scenario_my_regression():
    x, y = _regression_data()
    # the posterior of both coefficients, and predictions at three new inputs
    return Scenario(regression_model, regression_guide, (x, y), seed=0,
                    posterior=Posterior(sites=("slope", "intercept"), num_samples=400,
                                        predictive_args=(torch.tensor([-0.5, 0.0, 0.5]),)))


def scenario_my_mixture():
    data = torch.tensor([-2.1, -1.9, 2.2, 1.8, 2.0])

    def model(data):
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[z.long()], 0.5), obs=data)

    def guide(data):
        pass

    return Scenario(model, guide, (data,), seed=1, estimator="TraceEnum_ELBO",
                    elbo_kwargs={"max_plate_nesting": 1})
