"""Every argument is checked at construction, with an error that names it (not a
ZeroDivisionError mid-fit, a KeyError at the first compiled step, or a run that never
converges)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch

import pyro_svi_ext as ext
from pyro_svi_ext.infer.distributed import DistributedSVI
from pyro_svi_ext.infer.fit import Convergence
from pyro_svi_ext.validation import ArgumentTypeError


def model():
    pyro.sample("z", dist.Normal(0.0, 1.0))


def guide():
    pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


def _svi(**kwargs):
    return ext.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), ext.Trace_ELBO(), **kwargs)


REFUSED = {
    "Convergence(window=-5)": (lambda: Convergence(window=-5), "window"),
    "Convergence(window=0)": (lambda: Convergence(window=0), "window"),
    "Convergence(window=2.5)": (lambda: Convergence(window=2.5), "window"),
    "Convergence(window=True)": (lambda: Convergence(window=True), "window"),
    "Convergence(rtol=-1e-3)": (lambda: Convergence(rtol=-1e-3), "rtol"),
    "Convergence(rtol=nan)": (lambda: Convergence(rtol=float("nan")), "rtol"),
    "Convergence(rtol='0.1')": (lambda: Convergence(rtol="0.1"), "rtol"),
    "JitTrace_ELBO(cache_size=-1)": (lambda: ext.JitTrace_ELBO(cache_size=-1), "cache_size"),
    "JitTrace_ELBO(cache_size=0)": (lambda: ext.JitTrace_ELBO(cache_size=0), "cache_size"),
    "JitTrace_ELBO(cache_size='8')": (lambda: ext.JitTrace_ELBO(cache_size="8"), "cache_size"),
    "JitTraceEnum_ELBO(background_compile='no')": (
        lambda: ext.JitTraceEnum_ELBO(background_compile="no"), "background_compile"),
    "JitTrace_ELBO(backend=3)": (lambda: ext.JitTrace_ELBO(backend=3), "backend"),
    "Importance(num_samples='5')": (lambda: ext.Importance(model, num_samples="5"),
                                    "num_samples"),
    "Importance(num_samples=0)": (lambda: ext.Importance(model, num_samples=0), "num_samples"),
    "TracePredictive(num_samples=0)": (
        lambda: ext.TracePredictive(model, ext.Importance(model), num_samples=0),
        "num_samples"),
    "TracePredictive(num_samples=2.0)": (
        lambda: ext.TracePredictive(model, ext.Importance(model), num_samples=2.0),
        "num_samples"),
    "TracePredictive(posterior=list)": (lambda: ext.TracePredictive(model, [], 3),
                                        "posterior"),
    "TracePosterior(num_chains=0)": (lambda: ext.TracePosterior(num_chains=0), "num_chains"),
    "SVI(num_samples=-1)": (lambda: _svi(num_samples=-1), "num_samples"),
    "SVI(num_steps='10')": (lambda: _svi(num_steps="10"), "num_steps"),
    "SVI(loss_and_grads=3)": (lambda: _svi(loss_and_grads=3), "loss_and_grads"),
    "Trace_ELBO(tail_adaptive_beta='x')": (lambda: ext.Trace_ELBO(tail_adaptive_beta="x"),
                                           "tail_adaptive_beta"),
    "Trace_ELBO(retain_graph='yes')": (lambda: ext.Trace_ELBO(retain_graph="yes"),
                                       "retain_graph"),
    "RenyiELBO(alpha='0.5')": (lambda: ext.RenyiELBO(alpha="0.5"), "alpha"),
    "DistributedSVI(timeout=0)": (
        lambda: DistributedSVI(model, guide, pyro.optim.Adam({}), ext.Trace_ELBO(),
                               timeout=0), "timeout"),
    "DistributedSVI(plate=1)": (
        lambda: DistributedSVI(model, guide, pyro.optim.Adam({}), ext.Trace_ELBO(),
                               plate=1), "plate"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_bad_argument_is_refused_at_construction_naming_it(case):
    make, name = REFUSED[case]
    with pytest.raises((TypeError, ValueError)) as info:
        make()
    assert name in str(info.value)


def test_a_string_where_a_count_belongs_is_a_type_error_that_is_also_a_value_error():
    with pytest.raises(ArgumentTypeError) as info:
        ext.Importance(model, num_samples="5")
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


def test_good_arguments_are_kept():
    assert Convergence(window=1, rtol=0).window == 1
    assert ext.Importance(model, num_samples=3).num_samples == 3
    assert ext.Importance(model).num_samples == 10  # Pyro's default for None
    assert ext.TracePredictive(model, ext.Importance(model), num_samples=1).num_samples == 1
    assert ext.JitTrace_ELBO(cache_size=1).backend == "auto"


def test_fit_refuses_a_convergence_or_callback_of_the_wrong_kind():
    svi = _svi()
    with pytest.raises(TypeError, match="convergence"):
        svi.fit(3, convergence=50)
    with pytest.raises(TypeError, match="callbacks"):
        svi.fit(3, callbacks=[None])
    assert "loc" not in pyro.get_param_store()  # refused before the first step
