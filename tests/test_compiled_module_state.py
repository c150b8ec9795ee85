"""Under the compile switch, module state moves as under the eager step: BatchNorm's
running statistics and ``num_batches_tracked`` once per step, a ``train()``/``eval()``
switch selects another graph, buffers are read where they are, not frozen as constants,
and the global random generator stands where the eager step leaves it."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from svi_runs import compiled_step

from pyro_svi_ext import SVI, JitTrace_ELBO, Trace_ELBO

X = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
#: steps at which the network is switched: eval, train, eval again
SCHEDULE = {3: "eval", 5: "train", 7: "eval"}


class Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # no bias before a BatchNorm: its exact gradient would be 0 and the computed one
        # rounding noise, which Adam scales up to steps of either sign, so two correct
        # compilations differ there (see test_verify_tolerates_adam_on_noise_gradients)
        self.hidden = torch.nn.Linear(5, 4, bias=False)
        self.norm = torch.nn.BatchNorm1d(4)
        self.drop = torch.nn.Dropout(0.2)
        self.out = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.drop(self.norm(self.hidden(x))))


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True).expand(-1, 5), 1.0)
                    .to_event(1), obs=x)


def fit(elbo, steps: int = 9, wait_after: tuple = ()):
    """Train a BatchNorm + Dropout guide network under ``SCHEDULE``; the losses, the
    network's state after, where the random generator stands, and the SVI."""
    pyro.clear_param_store()
    torch.manual_seed(1)
    encoder = Encoder()

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(encoder(x), 1.0).to_event(1))

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    losses = []
    for i in range(steps):
        if i in SCHEDULE:
            getattr(encoder, SCHEDULE[i])()
        losses.append(svi.step(X))
        if i + 1 in wait_after:
            assert svi.wait_for_compiles(600)
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    encoder.eval()
    with torch.no_grad():
        state["eval-mode output"] = encoder(X)  # what a user computes after the fit
    return losses, state, encoder.training, torch.get_rng_state(), svi


def _assert_like_eager(eager, compiled) -> None:
    losses, state, training, rng, _ = compiled
    assert training == eager[2] and torch.equal(rng, eager[3])
    assert int(state["norm.num_batches_tracked"]) == int(eager[1]["norm.num_batches_tracked"])
    assert int(state["norm.num_batches_tracked"]) == 5  # training-mode steps 0-2, 5-6
    assert losses == pytest.approx(eager[0], rel=1e-3)  # rounding, compounded over steps
    for name, value in eager[1].items():
        torch.testing.assert_close(state[name], value, rtol=1e-3, atol=1e-3, msg=name)


@pytest.fixture(scope="module")
def eager_run():
    return fit(Trace_ELBO())


@pytest.mark.parametrize("backend", ["jit", "inductor"])
def test_a_batchnorm_dropout_guide_switched_to_eval_and_back_is_the_eager_run(
        eager_run, backend):
    compiled = fit(JitTrace_ELBO(backend=backend, background_compile=False))
    _assert_like_eager(eager_run, compiled)
    step = compiled_step(compiled[4].loss_fn)
    assert step.dynamic_reason is None
    # one graph per mode: the train graph is reused after the switch back, and the
    # eval graph reads the running statistics as they are at its second use
    assert step.compiles == 2 and len(step.graphs) == 2


@pytest.mark.parametrize("swap_after", [(2,), (4,)],
                         ids=["swap-before-switch", "swap-after-switch"])
def test_with_a_background_compile_the_run_is_the_eager_run(eager_run, swap_after):
    compiled = fit(JitTrace_ELBO(), wait_after=swap_after)
    _assert_like_eager(eager_run, compiled)
    assert compiled_step(compiled[4].loss_fn).dynamic_reason is None


def test_with_the_swap_pinned_the_background_run_is_the_blocking_run_bit_for_bit():
    # one thread, as the compile child's: the same kernels, the same reduction order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _bit_for_bit()
    finally:
        torch.set_num_threads(threads)


def _bit_for_bit():
    blocking = fit(JitTrace_ELBO(background_compile=False))
    # each graph ready when the blocking run's is: the train graph traced at step 2,
    # the eval graph at step 4
    background = fit(JitTrace_ELBO(), wait_after=(2, 4))
    assert background[0] == blocking[0]
    for name, value in blocking[1].items():
        assert torch.equal(background[1][name], value), name
    assert torch.equal(background[3], blocking[3])


def test_tracing_and_checking_a_graph_move_no_buffer():
    """The step that traces runs the model to record it and again to check it: the
    network's state moves once, as in an eager step."""
    counts = []
    for steps in (1, 2, 3):
        *_, svi = fit(JitTrace_ELBO(backend="eager"), steps=steps)
        (module,) = [m for m in compiled_step(svi.loss_fn).modules.modules
                     if isinstance(m, torch.nn.BatchNorm1d)]
        counts.append(int(module.num_batches_tracked))
    assert counts == [1, 2, 3]


def test_a_switch_of_the_global_state_traces_another_graph():
    pyro.clear_param_store()
    data = torch.randn(20)

    def model_(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        scale = torch.tensor(1.0)  # the default dtype's
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(loc, scale), obs=data)

    def guide_(data):
        pyro.sample("loc", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))

    elbo = JitTrace_ELBO(backend="eager")
    svi = SVI(model_, guide_, pyro.optim.Adam({"lr": 0.01}), elbo)
    for _ in range(3):
        svi.step(data)
    assert svi.compiles == 1
    pyro.enable_validation(False)
    with pytest.warns(RuntimeWarning, match="validation flag changed from True to False"):
        svi.step(data)
    assert svi.compiles == 2


def test_a_frozen_param_is_not_trained_by_the_compiled_step():
    def guide_(data):
        loc = pyro.param("m", torch.tensor(0.5))
        scale = pyro.param("scale", torch.tensor(1.0))
        pyro.sample("loc", dist.Normal(loc, scale.abs() + 0.1))

    def model_(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=data)

    data = torch.randn(20)
    runs = []
    for elbo in (Trace_ELBO(), JitTrace_ELBO(backend="eager")):
        pyro.clear_param_store()
        torch.manual_seed(0)
        svi = SVI(model_, guide_, pyro.optim.Adam({"lr": 0.1}), elbo)
        svi.step(data)
        pyro.param("scale").requires_grad_(False)
        for _ in range(4):
            svi.step(data)
        runs.append({k: v.detach().clone() for k, v in pyro.get_param_store().items()})
    assert torch.equal(runs[1]["scale"], runs[0]["scale"])
    torch.testing.assert_close(runs[1]["m"], runs[0]["m"])


def test_verify_tolerates_adam_on_noise_gradients():
    """``update_close``: where the traced gradient is rounding noise against the
    step's largest, a param may differ by Adam's amplified step; elsewhere it may not."""
    from pyro_svi_ext.compile.verify import update_close

    want = torch.tensor([1.000, 2.000])
    grad = torch.tensor([3.0, 1e-9])  # the second element's gradient is noise
    assert update_close(want, torch.tensor([1.000, 2.0123]), grad, 3.0)
    assert not update_close(want, torch.tensor([1.0123, 2.000]), grad, 3.0)
    assert not update_close(want, torch.tensor([1.000, float("nan")]), grad, 3.0)
