"""Built-in scenarios: (model, guide, args) builders with the estimator they exercise.

A scenario module (built-in or a user's) defines functions named ``scenario_<name>``
returning ``(model, guide, args, seed)``; optional attributes on the function select the
estimator (``estimator``, default ``"Trace_ELBO"``), its arguments (``elbo_kwargs``),
arguments for this package's side only (``ours_kwargs``), the Pyro class to compare with
when it differs (``pyro_estimator``) and extra quantities (``extras``: ``"importance"``,
``"predictive"``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

DATA = torch.tensor([1.1, 0.4, 1.9, 1.3, 0.8, 1.6, 0.2, 1.2])


def _normal_model(data, n=8):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("data", n if data is None else len(data)):
        return pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)


def _normal_guide(data, n=8):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def _with(estimator="Trace_ELBO", elbo_kwargs=None, extras=()):
    def mark(fn):
        fn.estimator = estimator
        fn.elbo_kwargs = elbo_kwargs or {}
        fn.extras = tuple(extras)
        return fn

    return mark


@_with("Trace_ELBO", extras=("importance", "predictive"))
def scenario_normal_normal():
    return _normal_model, _normal_guide, (DATA,), 0


@_with("Trace_ELBO", {"num_particles": 4, "vectorize_particles": True, "max_plate_nesting": 1})
def scenario_nonreparam_plate():
    x = torch.tensor([0.5, 1.5, -0.3, 2.2, 0.9])

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 5):
            k = pyro.sample("k", dist.Bernoulli(0.4))
            pyro.sample("x", dist.Normal(mu + k, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.tensor(0.1))
        p = pyro.param("p", torch.full((5,), 0.5), constraint=constraints.unit_interval)
        pyro.sample("mu", dist.Normal(loc, 1.0))
        with pyro.plate("data", 5):
            pyro.sample("k", dist.Bernoulli(p))

    return model, guide, (x,), 1


@_with("TraceGraph_ELBO")
def scenario_tracegraph_baseline():
    x = torch.tensor([0.3, 1.7, 2.1, -0.4])

    def model(x):
        for i in pyro.plate("seq", 4):
            z = pyro.sample(f"z_{i}", dist.Bernoulli(0.5))
            pyro.sample(f"x_{i}", dist.Normal(2.0 * z, 1.0), obs=x[i])

    def guide(x):
        p = pyro.param("p", torch.full((4,), 0.5), constraint=constraints.unit_interval)
        for i in pyro.plate("seq", 4):
            pyro.sample(f"z_{i}", dist.Bernoulli(p[i]),
                        infer={"baseline": {"use_decaying_avg_baseline": True}})

    return model, guide, (x,), 2


@_with("TraceEnum_ELBO", {"max_plate_nesting": 0})
def scenario_hmm_enum():
    data = torch.tensor([0.1, 1.2, 2.3, 1.9, 0.2, -0.1, 1.1, 2.0])

    def model(data):
        trans = pyro.param("trans", torch.ones(3, 3) / 3 + torch.eye(3),
                           constraint=constraints.simplex)
        locs = pyro.param("locs", torch.tensor([0.0, 1.0, 2.0]))
        x = 0
        for t in pyro.markov(range(len(data))):
            x = pyro.sample(f"x_{t}", dist.Categorical(trans[x]), infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Normal(locs[x], 0.5), obs=data[t])

    def guide(data):
        pass

    return model, guide, (data,), 3


@_with("RenyiELBO", {"alpha": 0.5, "num_particles": 4})
def scenario_renyi():
    return _normal_model, _normal_guide, (DATA,), 4


@_with("Trace_ELBO")
def scenario_autonormal_subsampled():
    """Probes the autoguide plate handling that changed between Pyro 1.8 and 1.9
    (``frame.full_size`` of subsampled plates)."""
    from pyro.infer.autoguide import AutoNormal

    data = torch.linspace(-1.0, 1.0, 40)

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 40, subsample_size=8) as ind:
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=data[ind])

    return model, AutoNormal(model), (data,), 5


def _compiled(pyro_estimator):
    def mark(fn):
        fn.ours_kwargs = {"backend": "eager"}
        fn.pyro_estimator = pyro_estimator
        return fn

    return mark


@_compiled("Trace_ELBO")
@_with("JitTrace_ELBO", {"num_particles": 2, "vectorize_particles": True,
                         "max_plate_nesting": 1})
def scenario_compiled_trace_elbo():
    """The compiled step against Pyro's eager Trace_ELBO on the same draws (Pyro's own
    JitTrace_ELBO draws a different random stream)."""
    return _normal_model, _normal_guide, (DATA,), 6


@_compiled("TraceEnum_ELBO")
@_with("JitTraceEnum_ELBO", {"max_plate_nesting": 0})
def scenario_compiled_hmm_enum():
    model, guide, args, _ = scenario_hmm_enum()
    return model, guide, args, 7
