"""The one catalogue of model/guide pairs: the test suite compares the package's
estimators with Pyro's own on them, and the compatibility matrix's built-in scenarios
are built from them.

Each case builds fresh callables (autoguides and modules keep state), with
deterministic initial values so that two builds are identical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints


@dataclass
class Case:
    name: str
    build: Callable[[], tuple]  # -> (model, guide, args)
    elbo_kwargs: dict = field(default_factory=dict)
    #: properties tests select by, e.g. "untraceable": the guide indexes a tensor with a
    #: sampled 0-dim tensor (``pb[a.long()]``), which reads a value into Python, so a
    #: compiled step falls back to eager
    tags: frozenset = frozenset()

    def __repr__(self) -> str:
        return self.name


def _data(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _loc_scale(name, shape, loc=0.1, scale=0.8):
    loc_p = pyro.param(f"{name}_loc", torch.full(shape, loc))
    scale_p = pyro.param(f"{name}_scale", torch.full(shape, scale), constraint=constraints.positive)
    return loc_p, scale_p


def single_site():
    x = torch.tensor(1.3)

    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        loc, scale = _loc_scale("z", ())
        pyro.sample("z", dist.Normal(loc, scale))

    return model, guide, (x,)


def to_event():
    x = _data(3)

    def model(x):
        z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)

    def guide(x):
        loc, scale = _loc_scale("z", (3,))
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide, (x,)


def plate():
    x = _data(6)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("data", 6):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        loc, scale = _loc_scale("mu", ())
        pyro.sample("mu", dist.Normal(loc, scale))
        zl, zs = _loc_scale("z", (6,), loc=0.2, scale=0.5)
        with pyro.plate("data", 6):
            pyro.sample("z", dist.Normal(zl, zs))

    return model, guide, (x,)


def nested_plates():
    x = _data(3, 4)

    def model(x):
        with pyro.plate("rows", 3, dim=-2):
            r = pyro.sample("r", dist.Normal(0.0, 1.0))
            with pyro.plate("cols", 4, dim=-1):
                pyro.sample("x", dist.Normal(r, 1.0), obs=x)
        with pyro.plate("cols2", 4, dim=-1):
            pyro.sample("c", dist.Normal(0.0, 1.0))

    def guide(x):
        rl, rs = _loc_scale("r", (3, 1))
        cl, cs = _loc_scale("c", (4,))
        with pyro.plate("rows", 3, dim=-2):
            pyro.sample("r", dist.Normal(rl, rs))
        with pyro.plate("cols2", 4, dim=-1):
            pyro.sample("c", dist.Normal(cl, cs))

    return model, guide, (x,)


def subsampled_plate():
    x = _data(100)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("data", 100, subsample_size=10) as ind:
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x[ind])

    def guide(x):
        loc, scale = _loc_scale("mu", ())
        pyro.sample("mu", dist.Normal(loc, scale))
        zl, zs = _loc_scale("z", (100,))
        with pyro.plate("data", 100, subsample_size=10) as ind:
            pyro.sample("z", dist.Normal(zl[ind], zs[ind]))

    return model, guide, (x,)


def masked():
    x = _data(8)
    mask = torch.tensor([True, False] * 4)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("data", 8), poutine.mask(mask=mask):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        with pyro.plate("data2", 8):
            pyro.sample("y", dist.Normal(mu, 1.0).mask(~mask), obs=x)

    def guide(x):
        loc, scale = _loc_scale("mu", ())
        pyro.sample("mu", dist.Normal(loc, scale))

    return model, guide, (x,)


def scaled():
    x = _data(5)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with poutine.scale(scale=0.25), pyro.plate("data", 5):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        loc, scale = _loc_scale("mu", ())
        with poutine.scale(scale=3.0):
            pyro.sample("mu", dist.Normal(loc, scale))

    return model, guide, (x,)


def nonreparam_global():
    x = _data(6) + 1.0

    def model(x):
        s = pyro.sample("s", dist.Bernoulli(0.4))
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 6):
            pyro.sample("x", dist.Normal(mu + 2.0 * s, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.tensor(0.6), constraint=constraints.unit_interval)
        pyro.sample("s", dist.Bernoulli(p))
        loc, scale = _loc_scale("mu", ())
        pyro.sample("mu", dist.Normal(loc, scale))

    return model, guide, (x,)


def nonreparam_in_plate():
    x = _data(5)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 5):
            k = pyro.sample("k", dist.Categorical(torch.ones(3) / 3))
            pyro.sample("x", dist.Normal(mu + k.float(), 1.0), obs=x)

    def guide(x):
        loc, scale = _loc_scale("mu", ())
        pyro.sample("mu", dist.Normal(loc, scale))
        probs = pyro.param("probs", torch.ones(5, 3) / 3, constraint=constraints.simplex)
        with pyro.plate("data", 5):
            pyro.sample("k", dist.Categorical(probs))

    return model, guide, (x,)


def nonreparam_nested():
    x = _data(2, 3)

    def model(x):
        with pyro.plate("outer", 2, dim=-2):
            g = pyro.sample("g", dist.Bernoulli(0.5))
            with pyro.plate("inner", 3, dim=-1):
                pyro.sample("x", dist.Normal(g, 1.0), obs=x)
        pyro.factor("prior_bonus", -0.1 * g.sum())

    def guide(x):
        p = pyro.param("p", torch.full((2, 1), 0.3), constraint=constraints.unit_interval)
        with pyro.plate("outer", 2, dim=-2):
            pyro.sample("g", dist.Bernoulli(p))

    return model, guide, (x,)


def sequential_plate():
    x = _data(3)

    def model(x):
        for i in pyro.plate("seq", 3):
            z = pyro.sample(f"z_{i}", dist.Bernoulli(0.5))
            pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=x[i])

    def guide(x):
        p = pyro.param("p", torch.full((3,), 0.4), constraint=constraints.unit_interval)
        for i in pyro.plate("seq", 3):
            pyro.sample(f"z_{i}", dist.Bernoulli(p[i]))

    return model, guide, (x,)


def amortized_module():
    torch.manual_seed(123)
    encoder = torch.nn.Linear(1, 2)
    x = _data(7)

    def model(x):
        with pyro.plate("data", 7):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        out = encoder(x.unsqueeze(-1))
        with pyro.plate("data", 7):
            pyro.sample("z", dist.Normal(out[:, 0], torch.nn.functional.softplus(out[:, 1])))

    return model, guide, (x,)


def _regression_model(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w + b, sigma), obs=y)


def _regression_data():
    x = _data(20, 3)
    y = x @ torch.tensor([1.0, -0.5, 0.3]) + 0.2 + 0.1 * _data(20, seed=1)
    return x, y


def auto_normal():
    from pyro.infer.autoguide import AutoNormal

    return _regression_model, AutoNormal(_regression_model), _regression_data()


def auto_delta():
    from pyro.infer.autoguide import AutoDelta

    return _regression_model, AutoDelta(_regression_model), _regression_data()


def auto_mvn():
    from pyro.infer.autoguide import AutoMultivariateNormal

    return _regression_model, AutoMultivariateNormal(_regression_model), _regression_data()


NORMAL_DATA = torch.tensor([1.1, 0.4, 1.9, 1.3, 0.8, 1.6, 0.2, 1.2])


def _normal_model(data, n=8):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("data", n if data is None else len(data)):
        return pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)


def _normal_guide(data, n=8):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def normal_normal():
    """Conjugate Normal-Normal; ``model(None, n)`` predicts ``n`` new observations."""
    return _normal_model, _normal_guide, (NORMAL_DATA,)


def autonormal_subsampled():
    """AutoNormal on a subsampled plate (the plate handling that changed between Pyro
    1.8 and 1.9: ``frame.full_size``)."""
    from pyro.infer.autoguide import AutoNormal

    data = torch.linspace(-1.0, 1.0, 40)

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 40, subsample_size=8) as ind:
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=data[ind])

    return model, AutoNormal(model), (data,)


CASES = [
    Case("normal_normal", normal_normal),
    Case("autonormal_subsampled", autonormal_subsampled),
    Case("single_site", single_site),
    Case("to_event", to_event),
    Case("plate", plate),
    Case("nested_plates", nested_plates),
    Case("subsampled_plate", subsampled_plate),
    Case("mask", masked),
    Case("poutine_scale", scaled),
    Case("nonreparam_global", nonreparam_global),
    Case("nonreparam_in_plate", nonreparam_in_plate),
    Case("nonreparam_nested_plates_factor", nonreparam_nested),
    Case("sequential_plate", sequential_plate),
    Case("pyro_module_amortized", amortized_module),
    Case("auto_normal", auto_normal),
    Case("auto_delta", auto_delta),
    Case("auto_multivariate_normal", auto_mvn),
    Case("num_particles_4", nonreparam_in_plate, {"num_particles": 4}),
    Case("vectorized_particles", nonreparam_in_plate,
         {"num_particles": 4, "vectorize_particles": True, "max_plate_nesting": 1}),
    Case("vectorized_nested", nonreparam_nested,
         {"num_particles": 3, "vectorize_particles": True, "max_plate_nesting": 2}),
]


# --- shapes that exercise TraceGraph_ELBO's dependency tracking and baselines --------


def nonreparam_chain():
    x = torch.tensor(0.7)

    def model(x):
        a = pyro.sample("a", dist.Bernoulli(0.3))
        b = pyro.sample("b", dist.Bernoulli(0.2 + 0.6 * a))
        c = pyro.sample("c", dist.Categorical(torch.stack([0.5 - 0.3 * b, 0.3 + 0.1 * b,
                                                            0.2 + 0.2 * b], -1)))
        pyro.sample("x", dist.Normal(c.float(), 1.0), obs=x)

    def guide(x):
        pa = pyro.param("pa", torch.tensor(0.4), constraint=constraints.unit_interval)
        pb = pyro.param("pb", torch.tensor([0.3, 0.6]), constraint=constraints.unit_interval)
        pc = pyro.param("pc", torch.ones(3) / 3, constraint=constraints.simplex)
        a = pyro.sample("a", dist.Bernoulli(pa))
        b = pyro.sample("b", dist.Bernoulli(pb[a.long()]))
        pyro.sample("c", dist.Categorical(pc * (1 + b)))

    return model, guide, (x,)


def nonreparam_inside_and_outside_plates():
    x = _data(4, 3)

    def model(x):
        s = pyro.sample("s", dist.Bernoulli(0.5))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 0.3))
        with pyro.plate("groups", 4, dim=-2):
            g = pyro.sample("g", dist.Bernoulli(0.3 + 0.4 * s))
            with pyro.plate("items", 3, dim=-1):
                k = pyro.sample("k", dist.Categorical(torch.tensor([0.2, 0.5, 0.3])))
                pyro.sample("x", dist.Normal(g + k.float() - s, scale), obs=x)

    def guide(x):
        ps = pyro.param("ps", torch.tensor(0.5), constraint=constraints.unit_interval)
        pg = pyro.param("pg", torch.full((4, 1), 0.4), constraint=constraints.unit_interval)
        pk = pyro.param("pk", torch.ones(4, 3, 3) / 3, constraint=constraints.simplex)
        loc, sc = _loc_scale("scale", ())
        pyro.sample("s", dist.Bernoulli(ps))
        pyro.sample("scale", dist.LogNormal(loc, sc))
        with pyro.plate("groups", 4, dim=-2):
            pyro.sample("g", dist.Bernoulli(pg))
            with pyro.plate("items", 3, dim=-1):
                pyro.sample("k", dist.Categorical(pk))

    return model, guide, (x,)


def sequential_chain():
    """A sequential plate whose iterations are independent, then a dependent tail."""
    x = _data(4)

    def model(x):
        zs = []
        for i in pyro.plate("seq", 3):
            z = pyro.sample(f"z_{i}", dist.Bernoulli(0.4))
            pyro.sample(f"x_{i}", dist.Normal(2.0 * z, 1.0), obs=x[i])
            zs.append(z)
        pyro.sample("tail", dist.Normal(sum(zs), 1.0), obs=x[3])

    def guide(x):
        p = pyro.param("p", torch.full((3,), 0.5), constraint=constraints.unit_interval)
        for i in pyro.plate("seq", 3):
            pyro.sample(f"z_{i}", dist.Bernoulli(p[i]))

    return model, guide, (x,)


def subsampled_nonreparam():
    x = _data(50)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("data", 50, subsample_size=8) as ind:
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(mu + z, 1.0), obs=x[ind])

    def guide(x):
        loc, scale = _loc_scale("mu", ())
        pyro.sample("mu", dist.Normal(loc, scale))
        p = pyro.param("p", torch.full((50,), 0.5), constraint=constraints.unit_interval)
        with pyro.plate("data", 50, subsample_size=8) as ind:
            pyro.sample("z", dist.Bernoulli(p[ind]))

    return model, guide, (x,)


def _baseline_case(baseline_for):
    x = _data(5) + 1.0

    def model(x):
        s = pyro.sample("s", dist.Bernoulli(0.4))
        with pyro.plate("data", 5):
            k = pyro.sample("k", dist.Bernoulli(0.3 + 0.3 * s))
            pyro.sample("x", dist.Normal(k + s, 1.0), obs=x)

    def guide(x):
        ps = pyro.param("ps", torch.tensor(0.6), constraint=constraints.unit_interval)
        pk = pyro.param("pk", torch.full((5,), 0.5), constraint=constraints.unit_interval)
        pyro.sample("s", dist.Bernoulli(ps), infer={"baseline": baseline_for("s", ())})
        with pyro.plate("data", 5):
            pyro.sample("k", dist.Bernoulli(pk), infer={"baseline": baseline_for("k", (5,))})

    return model, guide, (x,)


def baseline_decaying_average():
    return _baseline_case(lambda name, shape: {"use_decaying_avg_baseline": True,
                                               "baseline_beta": 0.8})


def baseline_value():
    return _baseline_case(lambda name, shape: {"baseline_value": torch.full(shape, -2.0)})


def baseline_nn():
    torch.manual_seed(7)
    nets = {"s": torch.nn.Linear(2, 1), "k": torch.nn.Linear(2, 1)}
    features = torch.tensor([0.5, -1.0])

    def options(name, shape):
        net = nets[name]

        def baseline(inp, net=net, shape=shape):
            pyro.module(f"baseline_{name}", net)
            return net(inp).sum().expand(shape) if shape else net(inp).squeeze(-1)

        return {"nn_baseline": baseline, "nn_baseline_input": features}

    return _baseline_case(options)


def baseline_nn_and_average():
    torch.manual_seed(8)
    net = torch.nn.Linear(2, 1)

    def options(name, shape):
        if name == "k":
            return {"use_decaying_avg_baseline": True}

        def baseline(inp):
            pyro.module("baseline_s", net)
            return net(inp).squeeze(-1)

        return {"nn_baseline": baseline, "nn_baseline_input": torch.tensor([1.0, 2.0]),
                "use_decaying_avg_baseline": True}

    return _baseline_case(options)


GRAPH_CASES = [
    Case("nonreparam_chain", nonreparam_chain, tags=frozenset({"untraceable"})),
    Case("nonreparam_inside_and_outside_plates", nonreparam_inside_and_outside_plates),
    Case("sequential_chain", sequential_chain),
    Case("subsampled_nonreparam", subsampled_nonreparam),
    Case("baseline_decaying_average", baseline_decaying_average),
    Case("baseline_value", baseline_value),
    Case("baseline_nn", baseline_nn),
    Case("baseline_nn_and_average", baseline_nn_and_average),
    Case("graph_vectorized", nonreparam_inside_and_outside_plates,
         {"num_particles": 3, "vectorize_particles": True, "max_plate_nesting": 2}),
    Case("graph_particles", nonreparam_chain, {"num_particles": 5},
         tags=frozenset({"untraceable"})),
]


# --- shapes with enumeration (TraceEnum_ELBO) -------------------------------------------


def _gmm_data(n=6, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(n // 2, generator=g) - 2, torch.randn(n - n // 2,
                                                                         generator=g) + 2])


def gmm_model_enum(k=3, n=6):
    data = _gmm_data(n)

    def model(data):
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(k)))
        locs = pyro.sample("locs", dist.Normal(torch.zeros(k), 3.0).to_event(1))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)

    def guide(data):
        conc = pyro.param("conc", torch.ones(k) * 2, constraint=constraints.positive)
        loc = pyro.param("locs_loc", torch.linspace(-1.0, 1.0, k))
        pyro.sample("weights", dist.Dirichlet(conc))
        pyro.sample("locs", dist.Normal(loc, 0.5).to_event(1))

    return model, guide, (data,)


def gmm_guide_enum(k=3, n=6, mode="parallel"):
    data = _gmm_data(n)

    def model(data):
        locs = pyro.sample("locs", dist.Normal(torch.zeros(k), 3.0).to_event(1))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(torch.ones(k) / k))
            pyro.sample("x", dist.Normal(locs[z], 1.0), obs=data)

    def guide(data):
        loc = pyro.param("locs_loc", torch.linspace(-1.0, 1.0, k))
        probs = pyro.param("assign", torch.ones(len(data), k) / k, constraint=constraints.simplex)
        pyro.sample("locs", dist.Normal(loc, 0.5).to_event(1))
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Categorical(probs), infer={"enumerate": mode})

    return model, guide, (data,)


def sequential_guide_enum():
    x = torch.tensor([0.3, 1.7])

    def model(x):
        a = pyro.sample("a", dist.Bernoulli(0.3))
        b = pyro.sample("b", dist.Categorical(torch.tensor([0.2, 0.5, 0.3])))
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 2):
            pyro.sample("x", dist.Normal(a + b.float() + mu, 1.0), obs=x)

    def guide(x):
        pa = pyro.param("pa", torch.tensor(0.5), constraint=constraints.unit_interval)
        pb = pyro.param("pb", torch.ones(3) / 3, constraint=constraints.simplex)
        loc, scale = _loc_scale("mu", ())
        pyro.sample("a", dist.Bernoulli(pa), infer={"enumerate": "sequential"})
        pyro.sample("b", dist.Categorical(pb), infer={"enumerate": "sequential"})
        pyro.sample("mu", dist.Normal(loc, scale))

    return model, guide, (x,)


def nested_enum_two_levels():
    x = _data(2, 3)

    def model(x):
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        with pyro.plate("groups", 2, dim=-2):
            g = pyro.sample("g", dist.Bernoulli(p), infer={"enumerate": "parallel"})
            with pyro.plate("items", 3, dim=-1):
                k = pyro.sample("k", dist.Categorical(torch.tensor([[0.7, 0.3], [0.2, 0.8]])[
                    g.long()]), infer={"enumerate": "parallel"})
                pyro.sample("x", dist.Normal(k.float() - g, 1.0), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor(2.0), constraint=constraints.positive)
        pyro.sample("p", dist.Beta(a, 2.0))

    return model, guide, (x,)


def hmm(T=50, K=3, history=1):
    g = torch.Generator().manual_seed(11)
    data = torch.randn(T, generator=g) + torch.arange(T).remainder(3).float()

    def model(data):
        trans = pyro.param("trans", torch.ones(K, K) / K + 0.3 * torch.eye(K),
                           constraint=constraints.simplex)
        locs = pyro.sample("locs", dist.Normal(torch.arange(K).float(), 1.0).to_event(1))
        x = 0
        for t in pyro.markov(range(len(data)), history=history):
            x = pyro.sample(f"x_{t}", dist.Categorical(trans[x]),
                            infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Normal(locs[x], 1.0), obs=data[t])

    def guide(data):
        loc = pyro.param("locs_loc", torch.zeros(K))
        pyro.sample("locs", dist.Normal(loc, 0.3).to_event(1))

    return model, guide, (data,)


def factorial_hmm(T=10, K=2):
    g = torch.Generator().manual_seed(12)
    data = torch.randn(T, generator=g)

    def model(data):
        ta = pyro.param("ta", torch.tensor([[0.8, 0.2], [0.3, 0.7]]),
                        constraint=constraints.simplex)
        tb = pyro.param("tb", torch.tensor([[0.6, 0.4], [0.1, 0.9]]),
                        constraint=constraints.simplex)
        scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
        a = b = 0
        for t in pyro.markov(range(T)):
            a = pyro.sample(f"a_{t}", dist.Categorical(ta[a]), infer={"enumerate": "parallel"})
            b = pyro.sample(f"b_{t}", dist.Categorical(tb[b]), infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Normal(a.float() - b.float(), scale), obs=data[t])

    def guide(data):
        loc, s = _loc_scale("scale", ())
        pyro.sample("scale", dist.LogNormal(loc, s))

    return model, guide, (data,)


def subsampled_enum():
    data = _gmm_data(40)

    def model(data):
        locs = pyro.sample("locs", dist.Normal(torch.zeros(2), 3.0).to_event(1))
        with pyro.plate("data", 40, subsample_size=8) as ind:
            z = pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[z.long()], 1.0), obs=data[ind])

    def guide(data):
        loc = pyro.param("locs_loc", torch.tensor([-1.0, 1.0]))
        pyro.sample("locs", dist.Normal(loc, 0.5).to_event(1))
        with pyro.plate("data", 40, subsample_size=8):
            pass

    return model, guide, (data,)


def enum_mixed_reparam():
    x = _data(4)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        s = pyro.sample("s", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
        with pyro.plate("data", 4):
            z = pyro.sample("z", dist.Normal(mu + s, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        loc, scale = _loc_scale("mu", ())
        zl, zs = _loc_scale("z", (4,))
        pyro.sample("mu", dist.Normal(loc, scale))
        with pyro.plate("data", 4):
            pyro.sample("z", dist.Normal(zl, zs))

    return model, guide, (x,)


def guide_enum_with_model_enum():
    x = _data(3)

    def model(x):
        c = pyro.sample("c", dist.Bernoulli(0.4))
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.2 + 0.6 * c), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(z + c, 1.0), obs=x)

    def guide(x):
        pc = pyro.param("pc", torch.tensor(0.5), constraint=constraints.unit_interval)
        pyro.sample("c", dist.Bernoulli(pc), infer={"enumerate": "parallel"})

    return model, guide, (x,)


def local_parallel_sampling():
    """Guide sites sampled several times in parallel (infer num_samples), discrete and
    continuous."""
    x = torch.tensor([0.4, 1.6, 1.1])

    def model(x):
        s = pyro.sample("s", dist.Bernoulli(0.4))
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3):
            pyro.sample("x", dist.Normal(mu + s, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)
        loc, scale = _loc_scale("mu", ())
        pyro.sample("s", dist.Bernoulli(p), infer={"enumerate": "parallel", "num_samples": 4})
        pyro.sample("mu", dist.Normal(loc, scale),
                    infer={"enumerate": "parallel", "num_samples": 3})

    return model, guide, (x,)


ENUM_CASES = [
    Case("gmm_model_enum", gmm_model_enum, {"max_plate_nesting": 1}),
    Case("gmm_guide_enum_parallel", gmm_guide_enum, {"max_plate_nesting": 1}),
    Case("gmm_guide_enum_sequential", lambda: gmm_guide_enum(n=2, mode="sequential"),
         {"max_plate_nesting": 1}),
    Case("sequential_guide_enum", sequential_guide_enum, {"max_plate_nesting": 1}),
    Case("nested_enum_two_levels", nested_enum_two_levels, {"max_plate_nesting": 2}),
    Case("hmm_markov_T50", hmm, {"max_plate_nesting": 0}),
    Case("hmm_history2", lambda: hmm(T=12, history=2), {"max_plate_nesting": 0}),
    Case("factorial_hmm", factorial_hmm, {"max_plate_nesting": 0}),
    Case("subsampled_enum", subsampled_enum, {"max_plate_nesting": 1}),
    Case("enum_mixed_reparam", enum_mixed_reparam, {"max_plate_nesting": 1}),
    Case("guide_and_model_enum", guide_enum_with_model_enum, {"max_plate_nesting": 1}),
    Case("gmm_guessed_nesting", gmm_model_enum),
    Case("gmm_particles", gmm_model_enum, {"max_plate_nesting": 1, "num_particles": 3}),
    Case("enum_vectorized", guide_enum_with_model_enum,
         {"max_plate_nesting": 1, "num_particles": 3, "vectorize_particles": True}),
    Case("enum_mixed_vectorized", enum_mixed_reparam,
         {"max_plate_nesting": 1, "num_particles": 4, "vectorize_particles": True}),
    Case("local_parallel_sampling", local_parallel_sampling, {"max_plate_nesting": 1}),
]


def pick(*names: str) -> list[Case]:
    """The cases of any catalogue with these names, in this order (a name not found
    fails the collection, loudly)."""
    every = {c.name: c for c in CASES + GRAPH_CASES + ENUM_CASES}
    return [every[name] for name in names]
