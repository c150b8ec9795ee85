"""An example of a user's own scenario module for ``python -m compat_matrix migrate``.

Each ``scenario_<name>`` function returns ``(model, guide, args, seed)``. Optional
attributes pick the estimator (``estimator``) and its arguments (``elbo_kwargs``).
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints


def scenario_my_regression():
    x = torch.linspace(-1.0, 1.0, 30)
    y = 0.7 * x - 0.2 + 0.1 * torch.sin(7 * x)

    def model(x, y):
        slope = pyro.sample("slope", dist.Normal(0.0, 1.0))
        intercept = pyro.sample("intercept", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(slope * x + intercept, 0.2), obs=y)

    def guide(x, y):
        for name in ("slope", "intercept"):
            loc = pyro.param(f"{name}_loc", torch.tensor(0.0))
            scale = pyro.param(f"{name}_scale", torch.tensor(0.5),
                               constraint=constraints.positive)
            pyro.sample(name, dist.Normal(loc, scale))

    return model, guide, (x, y), 0


def scenario_my_mixture():
    data = torch.tensor([-2.1, -1.9, 2.2, 1.8, 2.0])

    def model(data):
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[z.long()], 0.5), obs=data)

    def guide(data):
        pass

    return model, guide, (data,), 1


scenario_my_mixture.estimator = "TraceEnum_ELBO"
scenario_my_mixture.elbo_kwargs = {"max_plate_nesting": 1}
