"""Benchmark models: each ``build()`` returns (model, guide, args) with fresh state."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints


def blr_data(n: int = 1000, d: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    y = x @ w + 0.5 + 0.3 * torch.randn(n, generator=g)
    return x, y


def blr_model(x, y):
    d = x.shape[-1]
    w = pyro.sample("w", dist.Normal(torch.zeros(d), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w + b, sigma), obs=y)


def blr_guide(x, y):
    d = x.shape[-1]
    w_loc = pyro.param("w_loc", torch.zeros(d))
    w_scale = pyro.param("w_scale", torch.ones(d), constraint=constraints.positive)
    b_loc = pyro.param("b_loc", torch.tensor(0.0))
    b_scale = pyro.param("b_scale", torch.tensor(1.0), constraint=constraints.positive)
    s_loc = pyro.param("s_loc", torch.tensor(0.0))
    s_scale = pyro.param("s_scale", torch.tensor(0.1), constraint=constraints.positive)
    pyro.sample("w", dist.Normal(w_loc, w_scale).to_event(1))
    pyro.sample("b", dist.Normal(b_loc, b_scale))
    pyro.sample("sigma", dist.LogNormal(s_loc, s_scale))


def blr(n: int = 1000, d: int = 10):
    return blr_model, blr_guide, blr_data(n, d)


def blr_autonormal(n: int = 1000, d: int = 10):
    from pyro.infer.autoguide import AutoNormal

    return blr_model, AutoNormal(blr_model), blr_data(n, d)


def many_sites(k: int = 20):
    """A hierarchical model with ``k`` scalar latent sites and a mean-field guide."""
    data = torch.linspace(-1.0, 1.0, k)

    def model(data):
        tau = pyro.sample("tau", dist.HalfNormal(1.0))
        for i in range(k - 1):
            z = pyro.sample(f"z_{i}", dist.Normal(0.0, tau))
            pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=data[i])

    def guide(data):
        tl = pyro.param("tau_loc", torch.tensor(0.0))
        ts = pyro.param("tau_scale", torch.tensor(0.1), constraint=constraints.positive)
        pyro.sample("tau", dist.LogNormal(tl, ts))
        for i in range(k - 1):
            loc = pyro.param(f"z_{i}_loc", torch.tensor(0.0))
            scale = pyro.param(f"z_{i}_scale", torch.tensor(1.0), constraint=constraints.positive)
            pyro.sample(f"z_{i}", dist.Normal(loc, scale))

    return model, guide, (data,)
