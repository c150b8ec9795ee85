"""NumPyro twins of ``models.py``: same data (made by ``models``' helpers, so torch is
needed too), same priors, same guides and same initial parameter values.

Each ``build()`` returns (model, guide, args) with ``args`` as JAX arrays. Needs
``numpyro`` and ``jax`` (``pip install -e '.[bench]'``); the enumerated models also need
``funsor`` for NumPyro's ``TraceEnum_ELBO``.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import models
import numpyro
import numpyro.distributions as nd
from numpyro.distributions import constraints


def _jnp(t):
    return jnp.asarray(t.detach().numpy())


def blr_model(x, y):
    w = numpyro.sample("w", nd.Normal(jnp.zeros(x.shape[-1]), 1.0).to_event(1))
    b = numpyro.sample("b", nd.Normal(0.0, 10.0))
    sigma = numpyro.sample("sigma", nd.HalfNormal(1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", nd.Normal(x @ w + b, sigma), obs=y)


def blr_guide(x, y):
    d = x.shape[-1]
    pos = constraints.positive
    w_loc = numpyro.param("w_loc", jnp.zeros(d))
    w_scale = numpyro.param("w_scale", jnp.ones(d), constraint=pos)
    b_loc = numpyro.param("b_loc", 0.0)
    b_scale = numpyro.param("b_scale", 1.0, constraint=pos)
    s_loc = numpyro.param("s_loc", 0.0)
    s_scale = numpyro.param("s_scale", 0.1, constraint=pos)
    numpyro.sample("w", nd.Normal(w_loc, w_scale).to_event(1))
    numpyro.sample("b", nd.Normal(b_loc, b_scale))
    numpyro.sample("sigma", nd.LogNormal(s_loc, s_scale))


def blr(n: int = 1000, d: int = 10):
    return blr_model, blr_guide, tuple(_jnp(t) for t in models.blr_data(n, d))


def amortized_mlp(batch: int = 128, d: int = 10, latent: int = 2, hidden: int = 32):
    """The MLP encoder by hand: Linear(d, hidden)-Tanh-Linear(hidden, 2 * latent) as
    ``numpyro.param`` weights, initialized with the torch encoder's initial weights."""
    data = _jnp(models.amortized_mlp_data(batch, d))
    init = {k: _jnp(v) for k, v in models.mlp_encoder(d, latent, hidden).state_dict().items()}

    def model(data):
        weight = numpyro.param("decoder_weight", 0.1 * jnp.ones((latent, d)))
        with numpyro.plate("data", data.shape[0]):
            z = numpyro.sample("z", nd.Normal(jnp.zeros(latent), 1.0).to_event(1))
            numpyro.sample("x", nd.Normal(z @ weight, 1.0).to_event(1), obs=data)

    def guide(data):
        w0 = numpyro.param("encoder$$$0.weight", init["0.weight"])
        b0 = numpyro.param("encoder$$$0.bias", init["0.bias"])
        w2 = numpyro.param("encoder$$$2.weight", init["2.weight"])
        b2 = numpyro.param("encoder$$$2.bias", init["2.bias"])
        out = jnp.tanh(data @ w0.T + b0) @ w2.T + b2
        loc, scale = out[:, :latent], jax.nn.softplus(out[:, latent:])
        with numpyro.plate("data", data.shape[0]):
            numpyro.sample("z", nd.Normal(loc, scale).to_event(1))

    return model, guide, (data,)


def gmm_enum(k: int = 3, n: int = 500):
    data = _jnp(models.gmm_data(k, n))

    def model(data):
        weights = numpyro.sample("weights", nd.Dirichlet(jnp.ones(k)))
        locs = numpyro.sample("locs", nd.Normal(jnp.zeros(k), 10.0).to_event(1))
        scale = numpyro.sample("scale", nd.LogNormal(0.0, 1.0))
        with numpyro.plate("data", len(data)):
            z = numpyro.sample("z", nd.Categorical(weights), infer={"enumerate": "parallel"})
            numpyro.sample("x", nd.Normal(locs[z], scale), obs=data)

    def guide(data):
        conc = numpyro.param("conc", jnp.ones(k), constraint=constraints.positive)
        loc = numpyro.param("locs_loc", jnp.linspace(0.0, 4.0 * (k - 1), k))
        sl = numpyro.param("scale_loc", 0.0)
        numpyro.sample("weights", nd.Dirichlet(conc))
        numpyro.sample("locs", nd.Normal(loc, 0.1).to_event(1))
        numpyro.sample("scale", nd.LogNormal(sl, 0.1))

    return model, guide, (data,)


def hmm_enum(k: int = 4, t: int = 100, batch: int | None = None):
    """The HMM as a Python loop under ``numpyro.contrib.funsor.markov`` (NumPyro's
    ``TraceEnum_ELBO`` gets a ``scan`` version of this model wrong in numpyro 0.22: a loss
    of 715.2 against the exact -log p(y) = 200.45, and ``KeyError`` for short chains).

    Pyro's ``trans`` starts from rows of ``ones/k + eye`` that its softmax parametrization
    normalizes; NumPyro's stick-breaking one needs them normalized up front: same value.
    """
    from numpyro.contrib.funsor import markov  # needs funsor

    data = _jnp(models.hmm_data(k, t, batch))
    trans_init = jnp.ones((k, k)) / k + jnp.eye(k)
    trans_init = trans_init / trans_init.sum(-1, keepdims=True)

    def model(data):
        trans = numpyro.param("trans", trans_init, constraint=constraints.simplex)
        locs = numpyro.param("locs", jnp.arange(k, dtype=jnp.float32))
        sequences = (numpyro.plate("sequences", data.shape[1], dim=-1) if data.ndim > 1
                     else contextlib.nullcontext())
        x = 0
        with sequences:
            for i in markov(range(len(data))):
                x = numpyro.sample(f"x_{i}", nd.Categorical(trans[x]),
                                   infer={"enumerate": "parallel"})
                numpyro.sample(f"y_{i}", nd.Normal(locs[x], 1.0), obs=data[i])

    def guide(data):
        pass

    return model, guide, (data,)


def nonreparam_tracegraph(n: int = 200):
    x = _jnp(models.nonreparam_data(n))

    def model(x):
        s = numpyro.sample("s", nd.Bernoulli(0.4))
        mu = numpyro.sample("mu", nd.Normal(0.0, 1.0))
        with numpyro.plate("data", n):
            k = numpyro.sample("k", nd.Bernoulli(0.3 + 0.3 * s))
            numpyro.sample("x", nd.Normal(mu + 2.0 * k + s, 1.0), obs=x)

    def guide(x):
        ps = numpyro.param("ps", 0.6, constraint=constraints.unit_interval)
        pk = numpyro.param("pk", jnp.full((n,), 0.5), constraint=constraints.unit_interval)
        loc = numpyro.param("mu_loc", 0.0)
        scale = numpyro.param("mu_scale", 1.0, constraint=constraints.positive)
        numpyro.sample("s", nd.Bernoulli(ps))
        numpyro.sample("mu", nd.Normal(loc, scale))
        with numpyro.plate("data", n):
            numpyro.sample("k", nd.Bernoulli(pk))

    return model, guide, (x,)


def renyi_model(n: int = 100):
    x = _jnp(models.renyi_data(n))

    def model(x):
        mu = numpyro.sample("mu", nd.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", nd.LogNormal(0.0, 1.0))
        with numpyro.plate("data", n):
            z = numpyro.sample("z", nd.Normal(mu, tau))
            numpyro.sample("x", nd.Normal(z, 0.5), obs=x)

    def guide(x):
        pos = constraints.positive
        mu_loc = numpyro.param("mu_loc", 0.0)
        mu_scale = numpyro.param("mu_scale", 1.0, constraint=pos)
        tau_loc = numpyro.param("tau_loc", 0.0)
        tau_scale = numpyro.param("tau_scale", 0.1, constraint=pos)
        z_loc = numpyro.param("z_loc", jnp.zeros(n))
        z_scale = numpyro.param("z_scale", jnp.ones(n), constraint=pos)
        numpyro.sample("mu", nd.Normal(mu_loc, mu_scale))
        numpyro.sample("tau", nd.LogNormal(tau_loc, tau_scale))
        with numpyro.plate("data", n):
            numpyro.sample("z", nd.Normal(z_loc, z_scale))

    return model, guide, (x,)
