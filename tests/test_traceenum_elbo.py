"""TraceEnum_ELBO: parity with Pyro's, exactness against brute force, posterior sampling,
errors and the scaling of memory with chain length."""

import itertools
import warnings

import pyro
import pyro.distributions as dist
import pyro.infer
import pytest
import torch
from parity import assert_same_loss_and_grads, run_loss_and_grads
from pyro.distributions import constraints
from pyro.infer import config_enumerate
from pyro.ops.indexing import Vindex

import pyro_svi_ext
from compat_matrix.catalogue import CASES, ENUM_CASES, GRAPH_CASES
from pyro_svi_ext import TraceEnum_ELBO
from pyro_svi_ext.trace import TracePair
from pyro_svi_ext.trace.backward_sample import BackwardSampleMessenger

PLAIN = [c for c in CASES + GRAPH_CASES
         if c.name in {"plate", "nonreparam_in_plate", "auto_normal", "sequential_chain",
                       "baseline_nn", "vectorized_particles"}]


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "TraceEnum_ELBO found no sample sites")
        warnings.filterwarnings("ignore", ".*no sample sites configured for enumeration")
        yield


@pytest.mark.parametrize("case", ENUM_CASES + PLAIN, ids=repr)
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_grads_match_pyro(case, seed):
    ours = run_loss_and_grads(TraceEnum_ELBO(**case.elbo_kwargs), case, seed)
    theirs = run_loss_and_grads(pyro.infer.TraceEnum_ELBO(**case.elbo_kwargs), case, seed)
    assert theirs[1]
    assert_same_loss_and_grads(ours, theirs)


@pytest.mark.parametrize("case", ENUM_CASES, ids=repr)
def test_differentiable_loss_and_loss_match_pyro(case):
    for method in ("differentiable_loss", "loss"):
        ours = run_loss_and_grads(TraceEnum_ELBO(**case.elbo_kwargs), case, 2, method)
        theirs = run_loss_and_grads(pyro.infer.TraceEnum_ELBO(**case.elbo_kwargs), case, 2,
                                    method)
        assert_same_loss_and_grads(ours, theirs)


# --- exactness on small discrete models (float64) ----------------------------------------

OBS = torch.tensor([0.3, -1.2, 2.0, 0.8], dtype=torch.float64)
INIT = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
TRANS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]], dtype=torch.float64)
LOCS = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)


@config_enumerate
def small_hmm(obs=OBS):
    x = None
    for t in pyro.markov(range(len(obs))):
        probs = INIT if x is None else TRANS[x]
        x = pyro.sample(f"x_{t}", dist.Categorical(probs))
        pyro.sample(f"y_{t}", dist.Normal(LOCS[x], 1.0), obs=obs[t])


def empty_guide(obs=OBS):
    pass


def hmm_joint(states):
    lp = torch.tensor(0.0, dtype=torch.float64)
    prev = None
    for t, s in enumerate(states):
        lp = lp + (INIT[s] if prev is None else TRANS[prev, s]).log()
        lp = lp + dist.Normal(LOCS[s], 1.0).log_prob(OBS[t])
        prev = s
    return lp


ALL_STATES = list(itertools.product(range(3), repeat=len(OBS)))


def test_loss_is_the_exact_log_evidence():
    exact = torch.logsumexp(torch.stack([hmm_joint(s) for s in ALL_STATES]), 0).item()
    loss = TraceEnum_ELBO(max_plate_nesting=0).loss(small_hmm, empty_guide)
    assert loss == pytest.approx(-exact, abs=1e-9)


def test_marginals_equal_brute_force():
    joint = torch.stack([hmm_joint(s) for s in ALL_STATES])
    post = (joint - torch.logsumexp(joint, 0)).exp()
    marginals = TraceEnum_ELBO(max_plate_nesting=0).compute_marginals(small_hmm, empty_guide)
    assert sorted(marginals) == [f"x_{t}" for t in range(4)]
    for t in range(4):
        exact = torch.stack([post[[i for i, s in enumerate(ALL_STATES) if s[t] == k]].sum()
                             for k in range(3)])
        torch.testing.assert_close(marginals[f"x_{t}"].probs, exact, rtol=0, atol=1e-6)


G_PROBS = torch.tensor([0.3, 0.6], dtype=torch.float64)
K_PROBS = torch.tensor([[0.7, 0.3], [0.2, 0.8]], dtype=torch.float64)
X = torch.tensor([[0.1, 1.2, 0.9], [1.5, -0.3, 0.4]], dtype=torch.float64)


@config_enumerate
def nested_model():
    with pyro.plate("groups", 2, dim=-2):
        g = pyro.sample("g", dist.Bernoulli(G_PROBS.unsqueeze(-1)))
        with pyro.plate("items", 3, dim=-1):
            k = pyro.sample("k", dist.Categorical(K_PROBS[g.long()]))
            pyro.sample("x", dist.Normal(k.to(X.dtype) + g, 1.0), obs=X)


def test_nested_plates_are_exact():
    """Brute force over all 2^2 * 2^6 assignments of (g, k)."""
    total, g_mass, k_mass = [], torch.zeros(2, 2, dtype=torch.float64), None
    joints = []
    for gs in itertools.product(range(2), repeat=2):
        for ks in itertools.product(range(2), repeat=6):
            lp = torch.tensor(0.0, dtype=torch.float64)
            for i, gi in enumerate(gs):
                lp = lp + dist.Bernoulli(G_PROBS[i]).log_prob(torch.tensor(float(gi),
                                                                           dtype=torch.float64))
                for j in range(3):
                    kij = ks[3 * i + j]
                    lp = lp + K_PROBS[gi, kij].log()
                    lp = lp + dist.Normal(float(kij + gi), 1.0).log_prob(X[i, j])
            joints.append((gs, ks, lp))
    lps = torch.stack([lp for _, _, lp in joints])
    log_z = torch.logsumexp(lps, 0)
    loss = TraceEnum_ELBO(max_plate_nesting=2).loss(nested_model, lambda: None)
    assert loss == pytest.approx(-log_z.item(), abs=1e-9)
    post = (lps - log_z).exp()
    marginals = TraceEnum_ELBO(max_plate_nesting=2).compute_marginals(nested_model,
                                                                        lambda: None)
    for i in range(2):
        exact = sum(p for (gs, _, _), p in zip(joints, post, strict=True) if gs[i] == 1)
        assert marginals["g"].probs[i, 0].item() == pytest.approx(exact.item(), abs=1e-6)
    del total, g_mass, k_mass
    k_exact = sum(p for (_, ks, _), p in zip(joints, post, strict=True) if ks[4] == 1)
    assert marginals["k"].probs[1, 1, 1].item() == pytest.approx(k_exact.item(), abs=1e-6)


def test_sample_posterior_matches_the_exact_joint():
    """4000 joint draws of (x_0..x_2) of a 3-step HMM against the exact posterior over
    its 27 states: Pearson chi-square below the 0.001 critical value for 26 degrees of
    freedom (54.05), fixed seed."""
    obs = OBS[:3]
    states = list(itertools.product(range(3), repeat=3))
    joint = torch.stack([sum(((INIT[s[0]] if t == 0 else TRANS[s[t - 1], s[t]]).log()
                              + dist.Normal(LOCS[s[t]], 1.0).log_prob(obs[t])
                              for t in range(3)), torch.tensor(0.0, dtype=torch.float64))
                         for s in states])
    exact = (joint - torch.logsumexp(joint, 0)).exp()

    @config_enumerate
    def model(obs):
        x = None
        xs = []
        for t in pyro.markov(range(len(obs))):
            x = pyro.sample(f"x_{t}", dist.Categorical(INIT if x is None else TRANS[x]))
            pyro.sample(f"y_{t}", dist.Normal(LOCS[x], 1.0), obs=obs[t])
            xs.append(x)
        return xs

    pyro.set_rng_seed(0)
    elbo = TraceEnum_ELBO(max_plate_nesting=0)
    n = 4000
    counts = torch.zeros(len(states), dtype=torch.float64)
    index = {s: i for i, s in enumerate(states)}
    for _ in range(n):
        draw = elbo.sample_posterior(model, lambda obs: None, obs)
        counts[index[tuple(int(v) for v in draw)]] += 1
    expected = n * exact
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    print(f"chi-square {chi2:.2f}")
    assert chi2 < 54.05, chi2


def test_backward_sample_messenger_with_a_trace_pair():
    from pyro_svi_ext.trace.enum import enum_pairs

    (pair,) = list(enum_pairs(small_hmm, empty_guide, (), {}, 0))
    assert isinstance(pair, TracePair)
    with pyro.poutine.trace() as tr, BackwardSampleMessenger(pair):
        small_hmm()
    values = [tr.trace.nodes[f"x_{t}"]["value"] for t in range(4)]
    assert all(v.shape == () and 0 <= int(v) < 3 for v in values)
    with pytest.raises(RuntimeError, match="never sampled"), BackwardSampleMessenger(pair):
        pass


# --- errors and warnings -----------------------------------------------------------------


def test_a_global_site_depending_on_a_plated_enumerated_site_names_both():
    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Normal(z.sum(-1, keepdim=True), 1.0), obs=torch.tensor([1.0]))

    with pytest.raises(ValueError, match=r"'y' is outside plate.*'data'.*depends on 'z'"):
        TraceEnum_ELBO(max_plate_nesting=1).loss(model, lambda: None)


def test_an_error_while_guessing_max_plate_nesting_is_the_models_own():
    def model():
        pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        raise RuntimeError("model needs data")

    for elbo in (TraceEnum_ELBO(), pyro.infer.TraceEnum_ELBO()):  # same type as Pyro's
        with pytest.raises(RuntimeError, match="model needs data"):
            elbo.loss(model, lambda: None)


def test_differentiable_loss_raises_when_nothing_is_differentiable():
    def model():
        pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match="cannot be differentiated"):
        TraceEnum_ELBO(max_plate_nesting=0).differentiable_loss(model, lambda: None)


def test_strict_enumeration_warning():
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TraceEnum_ELBO(max_plate_nesting=0).loss(model, guide)
        TraceEnum_ELBO(max_plate_nesting=0, strict_enumeration_warning=False).loss(model, guide)
    messages = [str(w.message) for w in caught if "no sample sites" in str(w.message)]
    assert len(messages) == 1


def test_marginals_refuse_guide_enumeration_and_many_particles():
    case = next(c for c in ENUM_CASES if c.name == "gmm_guide_enum_parallel")
    model, guide, args = case.build()
    with pytest.raises(NotImplementedError, match="guide enumeration"):
        TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(model, guide, *args)
    with pytest.raises(NotImplementedError, match="num_particles=1"):
        TraceEnum_ELBO(max_plate_nesting=1, num_particles=2).sample_posterior(
            model, guide, *args)


def test_registered_with_enumeration_capability():
    (reg,) = [r for r in pyro_svi_ext.available() if r.name == "TraceEnum_ELBO"]
    assert reg.capabilities.enumeration
    assert pyro_svi_ext.get("traceenum_elbo") is TraceEnum_ELBO


# --- memory grows linearly with the chain length -------------------------------------------


def saved_bytes(elbo_cls, T, K=8):
    """Bytes autograd keeps for the backward pass of one loss_and_grads on an HMM."""
    torch.manual_seed(0)
    data = torch.randn(T)
    pyro.clear_param_store()

    def model(data):
        trans = pyro.param("trans", torch.ones(K, K) / K, constraint=constraints.simplex)
        locs = pyro.param("locs", torch.arange(K).float())
        x = 0
        for t in pyro.markov(range(len(data))):
            x = pyro.sample(f"x_{t}", dist.Categorical(trans[x]),
                            infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Normal(locs[x], 1.0), obs=data[t])

    total = [0]
    seen = set()

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        elbo_cls(max_plate_nesting=0).loss_and_grads(model, lambda data: None, data)
    return total[0]


def test_memory_grows_linearly_with_chain_length_and_no_worse_than_pyro():
    ours = [saved_bytes(TraceEnum_ELBO, T) for T in (50, 100, 200)]
    theirs = [saved_bytes(pyro.infer.TraceEnum_ELBO, T) for T in (50, 100, 200)]
    assert 1.7 < ours[1] / ours[0] < 2.3 and 1.7 < ours[2] / ours[1] < 2.3, ours
    assert all(o <= 1.05 * t for o, t in zip(ours, theirs, strict=True)), (ours, theirs)


# --- enumeration at scale: particle, sample and chain dims never multiplied out --------
def _local_samples_pair(num_samples):
    def model():
        for i, p in enumerate((0.1, 0.2, 0.3)):
            pyro.sample(f"x{i}", dist.Bernoulli(p))

    def guide():
        q = pyro.param("q", torch.tensor(0.75), constraint=constraints.unit_interval)
        for i in range(3):
            pyro.sample(f"x{i}", dist.Bernoulli(q),
                        infer={"enumerate": "parallel", "num_samples": num_samples})

    return model, guide


def _guide_hmm_pair(T):
    init = torch.tensor([0.5, 0.5])

    def chain(data, emit):
        trans = pyro.param("trans", torch.tensor([[0.75, 0.25], [0.25, 0.75]]),
                           constraint=constraints.simplex)
        emission = pyro.param("emission", torch.tensor([[0.7, 0.3], [0.2, 0.8]]),
                              constraint=constraints.simplex)
        x = None
        for i, y in pyro.markov(enumerate(data)):
            x = pyro.sample(f"x_{i}", dist.Categorical(init if x is None else trans[x]),
                            infer={} if emit else {"enumerate": "parallel"})
            if emit:
                pyro.sample(f"y_{i}", dist.Categorical(emission[x]), obs=y)

    return (lambda data: chain(data, True)), (lambda data: chain(data, False))


@pytest.mark.parametrize("shape", ["2000 samples x 3 sites", "guide HMM T=40"])
def test_enumeration_at_scale_agrees_with_pyro(shape):
    # the dense joint would be 2000^3 values, or 2^40: each would exhaust memory
    if shape.startswith("2000"):
        (model, guide), args = _local_samples_pair(2000), ()
    else:
        (model, guide), args = _guide_hmm_pair(40), (torch.ones(40).long(),)
    out = []
    for cls in (TraceEnum_ELBO, pyro.infer.TraceEnum_ELBO):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        loss = cls(max_plate_nesting=0).loss_and_grads(model, guide, *args)
        grads = {n: p.grad.clone() for n, p in pyro.get_param_store().named_parameters()}
        out.append((loss, grads))
    (ours, g_ours), (theirs, g_theirs) = out
    assert ours == pytest.approx(theirs, rel=1e-5)
    for name in g_theirs:
        torch.testing.assert_close(g_ours[name], g_theirs[name], rtol=1e-4, atol=1e-5)


def test_many_vectorized_particles_agree_with_pyro():
    data = torch.tensor([-2.1, -1.9, 0.1, 2.2, 1.8])

    @config_enumerate
    def model(data):
        locs = pyro.sample("locs", dist.Normal(0.0, 3.0).expand([3]).to_event(1))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(torch.ones(3) / 3))
            pyro.sample("obs", dist.Normal(Vindex(locs)[..., z], 1.0), obs=data)

    def guide(data):
        loc = pyro.param("loc", torch.tensor([-2.0, 0.0, 2.0]))
        pyro.sample("locs", dist.Normal(loc, 0.3).to_event(1))

    out = []
    for cls in (TraceEnum_ELBO, pyro.infer.TraceEnum_ELBO):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        elbo = cls(num_particles=2000, vectorize_particles=True)
        loss = elbo.loss_and_grads(model, guide, data)
        out.append((loss, pyro.param("loc").grad.clone()))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-4, atol=1e-4)
