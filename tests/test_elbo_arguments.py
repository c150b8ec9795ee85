"""The ELBO's documented arguments, their errors, and the pairing checks."""

import warnings

import pyro
import pyro.distributions as dist
import pyro.infer
import pytest
import torch

from pyro_svi_ext import Trace_ELBO


def test_defaults_match_the_documented_signature():
    elbo = Trace_ELBO()
    assert elbo.num_particles == 1
    assert elbo.max_plate_nesting == float("inf")
    assert elbo.vectorize_particles is False
    assert elbo.strict_enumeration_warning is True
    assert elbo.retain_graph is None


def test_max_iarange_nesting_is_a_deprecated_alias():
    with pytest.warns(DeprecationWarning, match="max_plate_nesting"):
        elbo = Trace_ELBO(max_iarange_nesting=2)
    assert elbo.max_plate_nesting == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_num_particles_must_be_positive_int(bad):
    with pytest.raises(ValueError, match="num_particles"):
        Trace_ELBO(num_particles=bad)


@pytest.mark.parametrize("bad", [-1, 1.5, "2"])
def test_max_plate_nesting_must_be_non_negative_int(bad):
    with pytest.raises(ValueError, match="max_plate_nesting"):
        Trace_ELBO(max_plate_nesting=bad)


def test_vectorize_particles_guesses_max_plate_nesting_like_pyro():
    def model():
        with pyro.plate("rows", 3, dim=-2), pyro.plate("cols", 2):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(3, 2))

    def guide():
        pass

    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True)
    elbo.loss(model, guide)
    assert elbo.max_plate_nesting == 3  # two plates, then the particle plate at dim -3


def test_vectorized_particles_take_the_next_dim():
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    assert elbo.max_plate_nesting == 2  # as Pyro: the particle plate sits at dim -2


def test_retain_graph_keeps_the_graph_for_a_second_backward():
    captured = []

    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
        captured.append(pyro.sample("z", dist.Normal(0.0, scale)))

    Trace_ELBO(retain_graph=True).loss_and_grads(model, guide)
    captured[-1].backward()  # the graph behind the draw is still there
    Trace_ELBO().loss_and_grads(model, guide)
    with pytest.raises(RuntimeError, match="second time"):
        captured[-1].backward()


def _pair(model_site="z", guide_site="z", guide_obs=None, model_event=1, guide_event=1):
    def model():
        pyro.sample(model_site, dist.Normal(torch.zeros(2), 1.0).to_event(model_event))

    def guide():
        loc = pyro.param("loc", torch.zeros(2))
        pyro.sample(guide_site, dist.Normal(loc, 1.0).to_event(guide_event), obs=guide_obs)

    return model, guide


def test_guide_site_missing_from_model_warns_with_its_name():
    model, guide = _pair(guide_site="w")
    with pytest.warns(UserWarning,
                      match=r"Found non-auxiliary vars in guide but not model: \['w'\]"):
        Trace_ELBO().loss(model, guide)


def test_model_latent_missing_from_guide_warns_with_its_name():
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("u", dist.Normal(0.0, 1.0))

    def guide():
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

    with pytest.warns(UserWarning, match=r"Found vars in model but not guide: \['u'\]"):
        Trace_ELBO().loss(model, guide)


def test_observed_guide_site_is_an_error_naming_it():
    model, guide = _pair(guide_obs=torch.zeros(2))
    with pytest.raises(ValueError,
                       match="site z must be sampled in trace: it is observed in the guide"):
        Trace_ELBO().loss(model, guide)


def test_event_dim_mismatch_names_the_site():
    model, guide = _pair(model_event=1, guide_event=0)
    with pytest.raises(ValueError, match=r"event_dims disagree at site 'z'"):
        Trace_ELBO().loss(model, guide)


def test_batch_shape_outside_plates_names_the_site():
    def model():
        pyro.sample("z", dist.Normal(torch.zeros(4), 1.0))  # batch dim without a plate

    with pytest.raises(ValueError,
                       match=r'at site "z", invalid log_prob shape.*batch shape \(4,\)'):
        Trace_ELBO().loss(model, model)


def test_plate_deeper_than_max_plate_nesting_names_the_site():
    def model():
        with pyro.plate("a", 2, dim=-1), pyro.plate("b", 3, dim=-2):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError,
                       match=r'at site "z", plate stack overflow.*max_plate_nesting=1'):
        Trace_ELBO(max_plate_nesting=1).loss(model, model)


def test_duplicate_site_names_are_an_error():
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(RuntimeError, match="Multiple sample sites named 'z'"):
        Trace_ELBO().loss(model, model)


def test_enumerated_guide_site_warns_to_use_trace_enum():
    def model():
        pyro.sample("k", dist.Bernoulli(0.5))

    def guide():
        pyro.sample("k", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})

    with pytest.warns(UserWarning, match=r"\['k'\].*TraceEnum_ELBO"):
        Trace_ELBO().loss(model, guide)


def test_pairing_checks_are_skipped_without_validation():
    model, guide = _pair(guide_site="w")
    pyro.enable_validation(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trace_ELBO().loss(model, guide)
