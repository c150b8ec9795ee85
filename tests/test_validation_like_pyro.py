"""Under ``pyro.enable_validation(True)``, a bad model or guide gets the exception (or
warning) type Pyro raises, with Pyro's key phrase, so ``except`` clauses and
``pytest.raises(match=...)`` written against Pyro keep working. Each scenario runs on
Pyro's class and on ours: both must raise."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pyro.infer
import pytest
import torch

import pyro_svi_ext


@dataclass
class Scenario:
    name: str
    model: object
    guide: object
    estimator: str
    expected: type  # an exception, or a Warning subclass
    phrase: str
    kwargs: dict

    def __repr__(self) -> str:
        return self.name


def _empty_guide(*args, **kwargs):
    pass


def _markov_too_short(data):
    # x[t] depends on x[t-2], but history=1 gives x[t-2]'s dim back to x[t]
    probs = torch.tensor([0.2, 0.7])
    xs = [0, 0]
    for t in pyro.markov(range(len(data)), history=1):
        x = pyro.sample(f"x_{t}", dist.Bernoulli(probs[xs[-2]]),
                        infer={"enumerate": "parallel"})
        xs.append(x.long())
        pyro.sample(f"y_{t}", dist.Normal(x, 1.0), obs=data[t])


def _model_batch(data):
    with pyro.plate("data", 3):
        pyro.sample("z", dist.Normal(0.0, 1.0))


def _guide_wrong_batch(data):
    loc = pyro.param("loc", torch.zeros(1))  # broadcasts into the loss, but is wrong
    pyro.sample("z", dist.Normal(loc, 1.0))


def _param_and_sample_named_alike(data):
    pyro.param("z", torch.tensor(0.0))
    pyro.sample("z", dist.Normal(0.0, 1.0))


def _model_z(data):
    pyro.sample("z", dist.Normal(0.0, 1.0))


def _model_sequential(data):
    pyro.sample("x", dist.Bernoulli(0.5), infer={"enumerate": "sequential"})


def _guide_with_factor(data):
    pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))
    pyro.factor("f", torch.tensor(1.0))


def _guide_with_extra_plate(data):
    loc = pyro.param("loc", torch.tensor(0.0))
    pyro.sample("z", dist.Normal(loc, 1.0))
    for _ in pyro.plate("extra", 2):
        pass


def _duplicate_sites(data):
    pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("z", dist.Normal(0.0, 1.0))


def _model_enum_global(data):
    a = pyro.sample("a", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
    with pyro.plate("b_axis", 2):
        b = pyro.sample("b", dist.Bernoulli(0.5))
        pyro.sample("c", dist.Normal(a + b, 1.0), obs=data[:2])


def _guide_enum_local(data):
    q = pyro.param("q", torch.tensor(0.4), constraint=dist.constraints.unit_interval)
    with pyro.plate("b_axis", 2):
        pyro.sample("b", dist.Bernoulli(q), infer={"enumerate": "parallel"})


def _global_after_enumerated(data):
    with pyro.plate("p", 2):
        x = pyro.sample("x", dist.Bernoulli(0.5))
    pyro.sample("y", dist.Normal(x.sum(), 1.0), obs=torch.tensor(0.0))


def _guide_enumerated_in_plate(data):
    q = pyro.param("q", torch.tensor(0.4), constraint=dist.constraints.unit_interval)
    with pyro.plate("p", 2):
        pyro.sample("x", dist.Bernoulli(q), infer={"enumerate": "parallel"})


DATA = torch.tensor([0.1, 1.2, 0.3, 1.4])

SCENARIOS = [
    Scenario("markov history too short", _markov_too_short, _empty_guide, "TraceEnum_ELBO",
             ValueError, "Enumeration dim conflict", {"max_plate_nesting": 0}),
    Scenario("model and guide batch shapes differ", _model_batch, _guide_wrong_batch,
             "Trace_ELBO", ValueError, "Model and guide shapes disagree at site 'z'", {}),
    Scenario("a param and a sample site share a name", _param_and_sample_named_alike,
             _empty_guide, "Trace_ELBO", RuntimeError, "z is already in the trace as a", {}),
    Scenario("model-side sequential enumeration", _model_sequential, _empty_guide,
             "TraceEnum_ELBO", NotImplementedError,
             "model-side sequential enumeration is not implemented",
             {"max_plate_nesting": 0}),
    Scenario("pyro.factor in a guide without has_rsample", _model_z, _guide_with_factor,
             "Trace_ELBO", ValueError, "missing specification of has_rsample", {}),
    Scenario("a plate in the guide but not the model", _model_z, _guide_with_extra_plate,
             "Trace_ELBO", UserWarning, "Found plate statements in guide but not model", {}),
    Scenario("duplicate sample sites", _duplicate_sites, _empty_guide, "Trace_ELBO",
             RuntimeError, "Multiple sample sites named 'z'", {}),
    Scenario("model latent missing from the guide", _model_z, _empty_guide, "Trace_ELBO",
             UserWarning, "Found vars in model but not guide", {}),
    Scenario("model enumeration more global than guide enumeration", _model_enum_global,
             _guide_enum_local, "TraceEnum_ELBO", ValueError,
             "Expected model enumeration to be no more global than guide enumeration",
             {"max_plate_nesting": 1}),
    Scenario("a global site after a guide-enumerated plated one", _global_after_enumerated,
             _guide_enumerated_in_plate, "TraceEnum_ELBO", RuntimeWarning,
             "possibly invalid dependency", {"max_plate_nesting": 1}),
]


@pytest.mark.parametrize("implementation", ["pyro", "ours"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=repr)
def test_validation_errors_match_pyro(scenario, implementation):
    module = pyro.infer if implementation == "pyro" else pyro_svi_ext
    elbo = getattr(module, scenario.estimator)(**scenario.kwargs)
    if issubclass(scenario.expected, Warning):
        with pytest.warns(scenario.expected, match=scenario.phrase), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            try:
                elbo.loss(scenario.model, scenario.guide, DATA)
            except ValueError:
                pass  # some scenarios go on to fail later; the warning is what counts
        return
    with pytest.raises(scenario.expected, match=scenario.phrase), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elbo.loss(scenario.model, scenario.guide, DATA)


def test_validation_off_skips_the_model_guide_checks():
    pyro.enable_validation(False)
    elbo = pyro_svi_ext.Trace_ELBO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        elbo.loss(_model_z, _guide_with_extra_plate, DATA)  # no warning without validation
