"""SVI's training loop: fit and run with a progress bar, the loss history, callbacks, a
convergence stop, and one non-finite-loss policy for eager and compiled steps."""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.distributions import constraints

from pyro_svi_ext import SVI, JitTrace_ELBO, NonFiniteLossError, Trace_ELBO
from pyro_svi_ext.errors import NonFiniteLossWarning
from pyro_svi_ext.infer.fit import Convergence


def model(data):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)


def guide(data):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(0.5), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


DATA = torch.tensor([1.0, 1.5, 0.5, 2.0])
BAD = torch.tensor([1.0, float("inf"), 0.5, 2.0])


def _svi(elbo=None, **kwargs):
    return SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo or Trace_ELBO(), **kwargs)


def test_fit_returns_and_keeps_the_history(capsys):
    svi = _svi()
    history = svi.fit(25, DATA)
    assert len(history) == 25 and history is svi.losses
    assert history.stop_reason is None
    assert all(isinstance(x, float) for x in history)
    assert "step" not in capsys.readouterr().err  # not a terminal: no bar


def test_the_progress_bar_shows_the_running_loss_when_asked(capsys):
    _svi().fit(30, DATA, progress_bar=True)
    err = capsys.readouterr().err
    assert "30/30" in err and "loss=" in err


def test_callbacks_see_each_step_and_can_stop_training():
    seen = []

    def callback(svi, step, loss):
        seen.append((step, loss))
        return step == 9

    history = _svi().fit(100, DATA, callbacks=[callback])
    assert [s for s, _ in seen] == list(range(10)) and len(history) == 10
    assert [x for _, x in seen] == history
    assert "callback" in history.stop_reason


def test_convergence_ends_training_once_the_windowed_mean_settles():
    def map_guide(data):
        pyro.sample("mu", dist.Delta(pyro.param("loc", torch.tensor(0.0))))

    svi = SVI(model, map_guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    history = svi.fit(5000, DATA, convergence=Convergence(window=50, rtol=1e-6))
    assert 100 <= len(history) < 5000
    assert "converged" in history.stop_reason
    assert pyro.param("loc").item() == pytest.approx(float(DATA.sum()) / (len(DATA) + 0.25),
                                                     abs=1e-2)


def test_run_takes_num_steps_keeps_the_losses_and_collects_traces():
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO(), num_samples=7,
              num_steps=12)
    assert svi.run(DATA) is svi
    assert len(svi.losses) == 12 and len(svi.exec_traces) == 7


@pytest.mark.parametrize("bad", [-1, 2.5, "10", True])
def test_a_bad_number_of_steps_is_refused(bad):
    with pytest.raises(ValueError, match="num_steps"):
        _svi().fit(bad, DATA)


def _snapshot():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


ELBOS = {"eager": lambda: Trace_ELBO(), "compiled": lambda: JitTrace_ELBO(backend="eager")}


@pytest.mark.parametrize("validation", [True, False])
@pytest.mark.parametrize("kind", sorted(ELBOS))
@pytest.mark.parametrize("policy", ["raise", "skip", "stop"])
def test_each_nonfinite_policy_is_the_same_for_eager_and_compiled_steps(policy, kind,
                                                                         validation):
    pyro.enable_validation(validation)
    svi = _svi(ELBOS[kind](), nonfinite=policy)
    svi.fit(4, DATA)  # the compiled graph exists from step 2
    before = _snapshot()
    if policy == "raise":
        with pytest.raises(NonFiniteLossError):
            svi.step(BAD)
    else:
        with pytest.warns(NonFiniteLossWarning, match="changed nothing") as seen:
            history = svi.fit(3, BAD)
        assert len(seen) == (1 if policy == "stop" else 3)
        assert len(history) == (1 if policy == "stop" else 3)
        assert (history.stop_reason is not None) == (policy == "stop")
    for name, value in before.items():
        torch.testing.assert_close(pyro.param(name).detach(), value, rtol=0, atol=0)
    svi.step(DATA)  # and training goes on
    assert not torch.equal(pyro.param("loc").detach(), before["loc"])


def test_the_default_policy_raises_under_validation_and_skips_without():
    svi = _svi()
    svi.fit(2, DATA)
    with pytest.raises(NonFiniteLossError):
        svi.step(BAD)
    pyro.enable_validation(False)
    with pytest.warns(NonFiniteLossWarning):
        svi.step(BAD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        svi.step(DATA)


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="nonfinite"):
        _svi(nonfinite="ignore")
