"""Benchmark models: each ``build()`` returns (model, guide, args) with fresh state."""

from __future__ import annotations

import contextlib

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


def discrete_plates():
    """Global and per-datum Bernoulli latents (N=8) with decaying-average baselines."""
    x = torch.linspace(-1.0, 2.0, 8)

    def model(x):
        s = pyro.sample("s", dist.Bernoulli(0.4))
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 8):
            k = pyro.sample("k", dist.Bernoulli(0.3 + 0.3 * s))
            pyro.sample("x", dist.Normal(mu + k + s, 1.0), obs=x)

    def guide(x):
        ps = pyro.param("ps", torch.tensor(0.6), constraint=constraints.unit_interval)
        pk = pyro.param("pk", torch.full((8,), 0.5), constraint=constraints.unit_interval)
        loc = pyro.param("mu_loc", torch.tensor(0.0))
        scale = pyro.param("mu_scale", torch.tensor(1.0), constraint=constraints.positive)
        baseline = {"baseline": {"use_decaying_avg_baseline": True}}
        pyro.sample("s", dist.Bernoulli(ps), infer=baseline)
        pyro.sample("mu", dist.Normal(loc, scale))
        with pyro.plate("data", 8):
            pyro.sample("k", dist.Bernoulli(pk), infer=baseline)

    return model, guide, (x,)


def sequential_bernoulli(t: int = 20):
    """A sequential plate of ``t`` independent Bernoulli latents with observations."""
    x = torch.linspace(-1.0, 3.0, t)

    def model(x):
        for i in pyro.plate("time", t):
            z = pyro.sample(f"z_{i}", dist.Bernoulli(0.5))
            pyro.sample(f"x_{i}", dist.Normal(2.0 * z, 1.0), obs=x[i])

    def guide(x):
        p = pyro.param("p", torch.full((t,), 0.5), constraint=constraints.unit_interval)
        for i in pyro.plate("time", t):
            pyro.sample(f"z_{i}", dist.Bernoulli(p[i]))

    return model, guide, (x,)


def gmm_data(k: int = 3, n: int = 500):
    g = torch.Generator().manual_seed(0)
    data = torch.cat([torch.randn(n // k, generator=g) + 4.0 * i for i in range(k)])[:n]
    return torch.cat([data, torch.randn(n - len(data), generator=g)])


def gmm_enum(k: int = 3, n: int = 500):
    """Gaussian mixture with model-side enumerated assignments (K components, N points)."""
    data = gmm_data(k, n)

    def model(data):
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(k)))
        locs = pyro.sample("locs", dist.Normal(torch.zeros(k), 10.0).to_event(1))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[z], scale), obs=data)

    def guide(data):
        conc = pyro.param("conc", torch.ones(k), constraint=constraints.positive)
        loc = pyro.param("locs_loc", torch.linspace(0.0, 4.0 * (k - 1), k))
        sl = pyro.param("scale_loc", torch.tensor(0.0))
        pyro.sample("weights", dist.Dirichlet(conc))
        pyro.sample("locs", dist.Normal(loc, 0.1).to_event(1))
        pyro.sample("scale", dist.LogNormal(sl, 0.1))

    return model, guide, (data,)


def hmm_data(k: int = 4, t: int = 100, batch: int | None = None):
    """Observations (T,), or (T, batch) for a batch of sequences."""
    g = torch.Generator().manual_seed(0)
    means = torch.arange(t).remainder(k).float()
    if batch is None:
        return torch.randn(t, generator=g) + means
    return torch.randn(t, batch, generator=g) + means[:, None]


def hmm_enum(k: int = 4, t: int = 100, batch: int | None = None):
    """HMM with K hidden states, T steps, states enumerated under ``pyro.markov``; with
    ``batch``, that many sequences in a plate (data (T, batch), ``max_plate_nesting=1``)."""
    data = hmm_data(k, t, batch)

    def model(data):
        trans = pyro.param("trans", torch.ones(k, k) / k + torch.eye(k),
                           constraint=constraints.simplex)
        locs = pyro.param("locs", torch.arange(k).float())
        sequences = (pyro.plate("sequences", data.shape[1], dim=-1) if data.dim() > 1
                     else contextlib.nullcontext())
        x = 0
        with sequences:
            for i in pyro.markov(range(len(data))):
                x = pyro.sample(f"x_{i}", dist.Categorical(trans[x]),
                                infer={"enumerate": "parallel"})
                pyro.sample(f"y_{i}", dist.Normal(locs[x], 1.0), obs=data[i])

    def guide(data):
        pass

    return model, guide, (data,)


def amortized_mlp_data(batch: int = 128, d: int = 10):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, d, generator=g)


def mlp_encoder(d: int = 10, latent: int = 2, hidden: int = 32):
    """Linear(d, hidden)-Tanh-Linear(hidden, 2 * latent), initialized from seed 0."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.Tanh(),
                               torch.nn.Linear(hidden, 2 * latent))


def amortized_mlp(batch: int = 128, d: int = 10, latent: int = 2, hidden: int = 32):
    """A VAE-style model: per-datum latents, an MLP encoder guide (``pyro.module``)."""
    data = amortized_mlp_data(batch, d)
    encoder = mlp_encoder(d, latent, hidden)

    def model(data):
        weight = pyro.param("decoder_weight", 0.1 * torch.ones(latent, d))
        with pyro.plate("data", data.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(latent), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ weight, 1.0).to_event(1), obs=data)

    def guide(data):
        pyro.module("encoder", encoder)
        out = encoder(data)
        loc, scale = out[:, :latent], torch.nn.functional.softplus(out[:, latent:])
        with pyro.plate("data", data.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide, (data,)


def nonreparam_data(n: int = 200):
    g = torch.Generator().manual_seed(0)
    k = (torch.rand(n, generator=g) < 0.6).float()
    return 0.5 + 2.0 * k + 1.0 + torch.randn(n, generator=g)


def nonreparam_tracegraph(n: int = 200):
    """Non-reparameterized latents for TraceGraph_ELBO: a global Bernoulli ``s`` and
    per-datum Bernoulli ``k`` (plate of N) with Normal observations; a guide with
    params and no baselines (decaying-average baselines write the param store)."""
    x = nonreparam_data(n)

    def model(x):
        s = pyro.sample("s", dist.Bernoulli(0.4))
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", n):
            k = pyro.sample("k", dist.Bernoulli(0.3 + 0.3 * s))
            pyro.sample("x", dist.Normal(mu + 2.0 * k + s, 1.0), obs=x)

    def guide(x):
        ps = pyro.param("ps", torch.tensor(0.6), constraint=constraints.unit_interval)
        pk = pyro.param("pk", torch.full((n,), 0.5), constraint=constraints.unit_interval)
        loc = pyro.param("mu_loc", torch.tensor(0.0))
        scale = pyro.param("mu_scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("s", dist.Bernoulli(ps))
        pyro.sample("mu", dist.Normal(loc, scale))
        with pyro.plate("data", n):
            pyro.sample("k", dist.Bernoulli(pk))

    return model, guide, (x,)


def renyi_data(n: int = 100):
    g = torch.Generator().manual_seed(0)
    z = 1.5 + 0.8 * torch.randn(n, generator=g)
    return z + 0.5 * torch.randn(n, generator=g)


def renyi_model(n: int = 100):
    """A small hierarchical Normal model for RenyiELBO: global ``mu`` and ``tau``, N
    local ``z`` in a plate, Normal observations; a mean-field Normal guide (LogNormal for
    ``tau``), no subsampling."""
    x = renyi_data(n)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(mu, tau))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        mu_loc = pyro.param("mu_loc", torch.tensor(0.0))
        mu_scale = pyro.param("mu_scale", torch.tensor(1.0), constraint=constraints.positive)
        tau_loc = pyro.param("tau_loc", torch.tensor(0.0))
        tau_scale = pyro.param("tau_scale", torch.tensor(0.1), constraint=constraints.positive)
        z_loc = pyro.param("z_loc", torch.zeros(n))
        z_scale = pyro.param("z_scale", torch.ones(n), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(mu_loc, mu_scale))
        pyro.sample("tau", dist.LogNormal(tau_loc, tau_scale))
        with pyro.plate("data", n):
            pyro.sample("z", dist.Normal(z_loc, z_scale))

    return model, guide, (x,)
