"""RenyiELBO: parity with Pyro's on the same draws, and its documented errors."""

import pyro
import pyro.distributions as dist
import pyro.infer
import pytest
import torch
from parity import assert_same_loss_and_grads, run_loss_and_grads
from pyro.distributions import constraints

import pyro_svi_ext
from compat_matrix.catalogue import CASES, GRAPH_CASES, Case
from pyro_svi_ext import RenyiELBO

NAMES = ["single_site", "to_event", "plate", "nested_plates", "mask", "poutine_scale",
         "nonreparam_global", "nonreparam_in_plate", "pyro_module_amortized", "auto_normal",
         "auto_multivariate_normal", "nonreparam_chain", "sequential_chain"]
SHAPES = [c for c in CASES + GRAPH_CASES if c.name in NAMES]
VECTORIZABLE = {"plate": 1, "nested_plates": 2, "nonreparam_in_plate": 1, "mask": 1}


@pytest.mark.parametrize("case", SHAPES, ids=repr)
@pytest.mark.parametrize("alpha", [0, 0.5, 2])
@pytest.mark.parametrize("num_particles", [2, 8])
def test_loss_and_grads_match_pyro(case, alpha, num_particles):
    kwargs = {"alpha": alpha, "num_particles": num_particles}
    ours = run_loss_and_grads(RenyiELBO(**kwargs), case, 0)
    theirs = run_loss_and_grads(pyro.infer.RenyiELBO(**kwargs), case, 0)
    assert theirs[1]
    assert_same_loss_and_grads(ours, theirs)


@pytest.mark.parametrize("name", sorted(VECTORIZABLE))
@pytest.mark.parametrize("alpha", [0, 0.5, 2])
@pytest.mark.parametrize("num_particles", [2, 8])
def test_vectorized_particles_match_pyro(name, alpha, num_particles):
    (base,) = [c for c in SHAPES if c.name == name]
    kwargs = {"alpha": alpha, "num_particles": num_particles, "vectorize_particles": True,
              "max_plate_nesting": VECTORIZABLE[name]}
    case = Case(name, base.build)
    for seed in (0, 1):
        ours = run_loss_and_grads(RenyiELBO(**kwargs), case, seed)
        theirs = run_loss_and_grads(pyro.infer.RenyiELBO(**kwargs), case, seed)
        assert_same_loss_and_grads(ours, theirs)


@pytest.mark.parametrize("case", SHAPES[:6], ids=repr)
def test_loss_matches_pyro(case):
    ours, _ = run_loss_and_grads(RenyiELBO(alpha=0.5, num_particles=4), case, 2, "loss")
    theirs, _ = run_loss_and_grads(pyro.infer.RenyiELBO(alpha=0.5, num_particles=4), case,
                                   2, "loss")
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)


def test_alpha_one_points_to_trace_elbo():
    with pytest.raises(ValueError, match="alpha = 1 use Trace_ELBO"):
        RenyiELBO(alpha=1)


def test_minibatches_are_refused_naming_the_plate():
    (case,) = [c for c in CASES if c.name == "subsampled_plate"]
    model, guide, args = case.build()
    with pytest.raises(ValueError, match=r"minibatch.*\['data'\]"):
        RenyiELBO().loss_and_grads(model, guide, *args)
    assert all(p.grad is None for _, p in pyro.get_param_store().named_parameters())


def test_full_plate_with_subsample_size_equal_to_size_is_accepted():
    def model():
        with pyro.plate("data", 5, subsample_size=5):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(5))
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.2)), 1.0))

    assert isinstance(RenyiELBO().loss(model, guide), float)


def test_iwae_bound_tightens_with_particles():
    """For a fixed (poor) guide, the IWAE bound E[log mean w] increases with K."""
    data = torch.tensor([2.0, 2.5, 1.5])

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=data)

    def guide():
        scale = pyro.param("s", torch.tensor(1.0), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(0.0, scale))

    pyro.set_rng_seed(0)
    bounds = [-sum(RenyiELBO(num_particles=k).loss(model, guide) for _ in range(300)) / 300
              for k in (1, 4, 32)]
    assert bounds[0] < bounds[1] < bounds[2]


def test_registered_under_its_names():
    assert pyro_svi_ext.get("iwae") is RenyiELBO
    assert pyro_svi_ext.get("renyi_elbo") is RenyiELBO
    assert pyro_svi_ext.make("RenyiELBO", alpha=0.5).num_particles == 2
