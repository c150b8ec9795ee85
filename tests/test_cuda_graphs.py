"""The ``"cudagraphs"`` backend's replay logic, on the CPU with a stand-in for
``torch.cuda.graph`` (nothing runs at the capture; a replay runs the captured step on
the captured tensors and writes fixed output tensors, as a CUDA graph does). The CUDA
tier (``test_cuda.py``) runs the real capture on a GPU."""

import pyro
import pyro.optim
import pytest
import torch
from svi_runs import assert_same_run, compiled_step, run_svi

from compat_matrix.catalogue import pick
from pyro_svi_ext import SVI, JitTrace_ELBO, Trace_ELBO
from pyro_svi_ext.compile import backends
from pyro_svi_ext.compile.cuda_graphs import (
    GraphReplay,
    cuda_graph_refusal,
    mutated_inputs,
    replayed_as_cuda_graph,
)


def fake_capture(run, inputs):
    with torch.random.fork_rng():
        shapes = run(*[t.clone() for t in inputs])
    outputs = tuple(torch.empty_like(o) for o in shapes)

    def replay():
        for out, new in zip(outputs, run(*inputs), strict=True):
            out.copy_(new)

    return replay, outputs


def sgd_step(param, data, lr):
    """A step that writes its first input: ``(loss,)``, ``param -= lr * grad``."""
    loss = ((param - data) ** 2).sum()
    param.sub_(lr * 2 * (param - data).sum(0))
    return (loss,)


def test_a_replay_equals_the_step_through_new_changed_and_replaced_inputs():
    param, plain_param = torch.zeros(3), torch.zeros(3)
    data, lr = torch.ones(4, 3), torch.tensor(0.01)
    first_data = data.clone()
    replay = GraphReplay(sgd_step, frozenset({0}), fake_capture, warmup=1)
    got, want = [], []

    def both(p, d, learning_rate, plain=None):
        got.append(replay(p, d, learning_rate)[0])
        want.append(sgd_step(plain if plain is not None else plain_param, d, learning_rate)[0])

    both(param, data, lr)                # warm-up: run as it is
    both(param, data, lr)                # captured, then replayed
    both(param, data, lr)                # same inputs: nothing copied
    data.mul_(2.0)                       # changed in place: copied in
    both(param, data, lr)
    both(param, torch.full((4, 3), -1.0), torch.tensor(0.02))  # new tensors: copied in
    assert replay.captures == 1 and replay.reason is None
    torch.testing.assert_close(param, plain_param)
    loaded = param.clone()               # a written input replaced (params loaded)
    plain_loaded = plain_param.clone()
    both(loaded, data, lr, plain_loaded)
    both(loaded, data, lr, plain_loaded)
    assert replay.captures == 2
    torch.testing.assert_close(loaded, plain_loaded)
    torch.testing.assert_close(param, plain_param)  # the replaced tensor is left alone
    assert [float(g) for g in got] == pytest.approx([float(w) for w in want])
    assert len({float(g) for g in got}) > 3  # each loss kept its own value (cloned)
    torch.testing.assert_close(first_data * 2.0, data)  # the caller's data never written


def test_a_capture_that_fails_runs_the_step_uncaptured_from_then_on():
    def failing_capture(run, inputs):
        raise RuntimeError("operation not permitted when stream is capturing")

    param, plain = torch.zeros(3), torch.zeros(3)
    replay = GraphReplay(sgd_step, frozenset({0}), failing_capture, warmup=0)
    for _ in range(3):
        torch.testing.assert_close(replay(param, torch.ones(4, 3), torch.tensor(0.1))[0],
                                   sgd_step(plain, torch.ones(4, 3), torch.tensor(0.1))[0])
    assert replay.reason.startswith("RuntimeError: operation not permitted")
    assert replay.captures == 0
    torch.testing.assert_close(param, plain)


def test_written_inputs_are_found_through_views_and_read_ones_are_not():
    def step(a, b, c):
        a.copy_(b * 2)
        c.view(-1).add_(1.0)
        return (b.sum(),)

    gm = torch.fx.experimental.proxy_tensor.make_fx(step)(torch.zeros(2), torch.ones(2),
                                                          torch.zeros(1, 2))
    assert mutated_inputs(gm) == frozenset({0, 2})


def test_steps_the_replay_cannot_serve_are_refused_with_the_reason():
    def draws(x):
        return (x + torch.randn(3),)

    gm = torch.fx.experimental.proxy_tensor.make_fx(draws)(torch.zeros(3))
    assert "the random op aten.randn" in cuda_graph_refusal(gm, [torch.zeros(3)])
    plain = torch.fx.experimental.proxy_tensor.make_fx(lambda x: (x * 2,))(torch.zeros(3))
    assert "not on one CUDA device" in cuda_graph_refusal(plain, [torch.zeros(3)])
    compiled = replayed_as_cuda_graph(lambda gm, inputs: gm, plain, [torch.zeros(3)])
    assert compiled is plain  # refused: the backend's step as it is


def test_the_compiled_step_replayed_equals_the_eager_step(monkeypatch):
    """The real production graph of a whole SVI step (Adam's state written in place),
    replayed through the stand-in capture: same losses, params and optimizer state as
    the eager step, and each lazily returned loss keeps its value."""
    monkeypatch.setitem(backends.BACKENDS, "cudagraphs", backends.Backend(
        "cudagraphs", lambda gm, inputs: replayed_as_cuda_graph(
            backends.BACKENDS["eager"].compile, gm, inputs, capture=fake_capture)))
    (case,) = pick("plate")
    elbo = JitTrace_ELBO(backend="cudagraphs", background_compile=False)
    ours = run_svi(elbo, case, steps=8)
    (graph,) = compiled_step(elbo).graphs.graphs.values()
    assert isinstance(graph.run, GraphReplay) and graph.run.captures == 1
    assert_same_run(ours, run_svi(Trace_ELBO(), case, steps=8))

    pyro.clear_param_store()
    model, guide, args = case.build()
    pyro.set_rng_seed(0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}),
              JitTrace_ELBO(backend="cudagraphs", background_compile=False))
    lazy = [svi.step_tensor(*args) for _ in range(8)]
    assert [float(t) for t in lazy] == pytest.approx(ours.losses, rel=1e-5)
