"""Under the compile switch a step's arguments behave as under the eager step: tensors
passed by keyword are inputs (not constants keyed by a summary), a float that changes
every step (KL annealing) compiles once, a float the model branches on is keyed by
value, and random draws stay in step with the eager ones, used or not."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.optim
import pyro.poutine as poutine
import pytest
import torch

from pyro_svi_ext import SVI, JitTrace_ELBO, Trace_ELBO
from pyro_svi_ext.compile.step import RecompileWarning


def _losses(elbo, model, guide, calls, lr: float = 0.1, seed: int = 0):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), elbo)
    losses = [svi.step(*args, **kwargs) for args, kwargs in calls]
    return losses, svi, torch.get_rng_state()


def normal_mean_model(data=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)


def normal_mean_guide(data=None):
    pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


def test_a_tensor_passed_by_keyword_is_an_input_not_a_constant():
    """Two batches whose printed summary agrees (the middle differs) once shared a
    graph: the second got the first batch's loss."""
    a, b = torch.zeros(2000), torch.zeros(2000)
    b[5:-5] = 100.0
    assert repr(a) == repr(b)  # the case under test
    calls = [((), {"data": a})] * 3 + [((), {"data": b})]
    eager, _, _ = _losses(Trace_ELBO(), normal_mean_model, normal_mean_guide, calls)
    compiled, svi, _ = _losses(JitTrace_ELBO(backend="eager"), normal_mean_model,
                               normal_mean_guide, calls)
    assert compiled == pytest.approx(eager, rel=1e-5)
    assert svi.compiles == 1


def test_tensors_in_a_dict_argument_are_inputs():
    def model(batch):
        normal_mean_model(batch["x"])

    def guide(batch):
        normal_mean_guide(batch["x"])

    batches = [({"x": torch.randn(50) + shift},) for shift in (0.0, 3.0, -2.0, 5.0)]
    calls = [(batch, {}) for batch in batches]
    eager, _, _ = _losses(Trace_ELBO(), model, guide, calls)
    compiled, svi, _ = _losses(JitTrace_ELBO(backend="eager"), model, guide, calls)
    assert compiled == pytest.approx(eager, rel=1e-5) and svi.compiles == 1


def annealed_model(x, annealing_factor=1.0):
    with pyro.plate("data", x.shape[0]):
        with poutine.scale(scale=annealing_factor):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def annealed_guide(x, annealing_factor=1.0):
    loc = pyro.param("loc", torch.zeros(x.shape[0], 3))
    with pyro.plate("data", x.shape[0]), poutine.scale(scale=annealing_factor):
        pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))


X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backend", ["eager", "jit"])
def test_an_annealing_factor_changing_every_step_compiles_once(backend):
    """As Pyro's DMM and VAE examples anneal the KL term (poutine.scale by a float
    passed to svi.step)."""
    calls = [((X,), {"annealing_factor": 0.2 + i / 100}) for i in range(12)]
    eager, _, _ = _losses(Trace_ELBO(), annealed_model, annealed_guide, calls)
    compiled, svi, _ = _losses(JitTrace_ELBO(backend=backend, background_compile=False),
                               annealed_model, annealed_guide, calls)
    assert compiled == pytest.approx(eager, rel=1e-5)
    assert svi.compiles == 1


def test_a_float_the_model_branches_on_is_keyed_by_value():
    def model(x, beta):
        if beta > 0.5:  # a Python branch on the float: another program above 0.5
            pyro.sample("extra", dist.Normal(0.0, 1.0))
        annealed_model(x, beta)

    def guide(x, beta):
        if beta > 0.5:
            pyro.sample("extra", dist.Normal(pyro.param("e", torch.tensor(0.0)), 1.0))
        annealed_guide(x, beta)

    calls = [((X, beta), {}) for beta in (0.2, 0.3, 0.4, 0.6, 0.7, 0.6)]
    eager, _, _ = _losses(Trace_ELBO(), model, guide, calls)
    with pytest.warns(RecompileWarning, match="float argument 1 is keyed by its value"):
        compiled, svi, _ = _losses(JitTrace_ELBO(backend="eager"), model, guide, calls)
    assert compiled == pytest.approx(eager, rel=1e-5)
    assert svi.compiles == 3  # traced at 0.3 (floats as inputs), then at 0.6 and 0.7


def test_a_float_read_as_a_plain_number_is_keyed_by_value():
    def model(x, beta):
        annealed_model(x, round(beta, 1))  # round(): a plain number, baked in

    def guide(x, beta):
        annealed_guide(x, round(beta, 1))

    calls = [((X, beta), {}) for beta in (0.21, 0.22, 0.31, 0.22)]
    eager, _, _ = _losses(Trace_ELBO(), model, guide, calls)
    compiled, svi, _ = _losses(JitTrace_ELBO(backend="eager"), model, guide, calls)
    assert compiled == pytest.approx(eager, rel=1e-5)
    assert svi.compiles == 2  # 0.21 and 0.22: one graph (the trace); 0.31: another


def subsampled_model(batch, size):
    """``pyro.plate(name, size, subsample_size)`` without using its indices, as Pyro's
    svi_horovod example writes it: each eager step draws the indices anyway."""
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", size, len(batch)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=batch)


def subsampled_guide(batch, size):
    pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


def indexed_model(data, size):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", size, 100) as idx:
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=data[idx])


@pytest.mark.parametrize("backend", ["auto", "jit", "inductor"])
@pytest.mark.parametrize("program", ["unused indices", "indices used"])
def test_the_random_stream_after_compiled_steps_is_the_eager_one(backend, program):
    data = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    model = subsampled_model if program == "unused indices" else indexed_model
    calls = [((data[:100] if model is subsampled_model else data, 1000), {})] * 8
    eager, _, eager_rng = _losses(Trace_ELBO(), model, subsampled_guide, calls)
    elbo = JitTrace_ELBO(backend=backend, background_compile=False)
    compiled, svi, rng = _losses(elbo, model, subsampled_guide, calls)
    assert svi.compiles == 1
    assert torch.equal(rng, eager_rng)
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_a_step_with_no_params_and_an_empty_model_compile_without_a_warning(recwarn):
    def model(data):
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(0.0, 1.0), obs=data)

    def empty(data):
        pass

    for m, g in ((model, empty), (empty, empty)):
        calls = [((torch.randn(10),), {})] * 4
        eager, _, _ = _losses(Trace_ELBO(), m, g, calls)
        compiled, svi, _ = _losses(JitTrace_ELBO(backend="eager"), m, g, calls)
        assert compiled == pytest.approx(eager)
        step = svi._stepper
        assert step.dynamic_reason is None and svi.compiles == 1
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
def test_math_on_a_float_argument_is_not_followed_without_the_sentinel_check():
    """``math.log`` reads a float subclass's value directly: no guard can see it. The
    first call with a new value is checked against the eager step (the sentinel),
    which finds the difference and keys the argument by value."""
    def model(x, beta):
        annealed_model(x, math.exp(math.log(beta)))

    def guide(x, beta):
        annealed_guide(x, math.exp(math.log(beta)))

    calls = [((X, beta), {}) for beta in (0.2, 0.25, 0.3, 0.35, 0.4)]
    eager, _, _ = _losses(Trace_ELBO(), model, guide, calls)
    compiled, _, _ = _losses(JitTrace_ELBO(backend="eager"), model, guide, calls)
    assert compiled == pytest.approx(eager, rel=1e-5)


def test_an_argument_that_changes_every_call_ends_in_the_eager_step():
    """An int keyed by value that changes on every call would trace a graph per call:
    after ``THRASH * cache_size`` graphs the step runs eagerly, saying why."""
    def model(x, epoch):
        annealed_model(x, 0.5)

    def guide(x, epoch):
        annealed_guide(x, 0.5)

    calls = [((X, epoch), {}) for epoch in range(12)]
    eager, _, _ = _losses(Trace_ELBO(), model, guide, calls)
    with pytest.warns(RuntimeWarning, match="inputs change on almost every call"):
        compiled, svi, _ = _losses(JitTrace_ELBO(backend="eager", cache_size=2), model,
                                   guide, calls)
    assert svi.compiles == 8 and compiled == pytest.approx(eager, rel=1e-5)
