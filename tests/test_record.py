"""The step recorder (``compile/record.py``): the graph it records replays what the
function computes on new inputs (as ``make_fx``'s does), and every read of tensor
values into Python stops it."""

from __future__ import annotations

import collections

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from svi_runs import compiled_step
from torch.fx.experimental.proxy_tensor import make_fx

import pyro_svi_ext
from pyro_svi_ext.compile import tracer as step_module
from pyro_svi_ext.compile.record import record
from pyro_svi_ext.compile.tracing import Untraceable

CONSTANT = torch.tensor([0.5, -1.0, 2.0])


def loss_and_grad(w, x):
    """A small regression loss and its gradient (the backward pass is recorded too)."""
    pred = torch.tanh(x @ w) + CONSTANT.sum()
    loss = ((pred - 1.0) ** 2).mean() + torch.logsumexp(w, 0)
    (grad,) = torch.autograd.grad(loss, [w])
    return loss, grad


def leaf(t):
    return t.detach().clone().requires_grad_()


def test_recorded_graph_replays_new_inputs_like_make_fx():
    w, x = torch.randn(3), torch.randn(5, 3)
    recorded = record(loss_and_grad, [leaf(w), x])
    traced = make_fx(loss_and_grad, tracing_mode="fake", _allow_non_fake_inputs=True)(
        leaf(w), x)
    w2, x2 = torch.randn(3), torch.randn(5, 3)
    want = loss_and_grad(leaf(w2), x2)
    with torch.no_grad():
        got, theirs = recorded(w2, x2), traced(w2, x2)
    for a, b, c in zip(want, got, theirs, strict=True):
        torch.testing.assert_close(b, a.detach())
        torch.testing.assert_close(c, a.detach())

    def ops(gm):
        return collections.Counter(str(n.target) for n in gm.graph.nodes
                                   if n.op == "call_function"
                                   and n.target is not torch.ops.aten.detach.default)

    assert ops(recorded) == ops(traced)
    vals = [n.meta["val"] for n in recorded.graph.nodes if n.op == "call_function"
            and isinstance(n.meta.get("val"), torch.Tensor)]
    assert vals and all(v.device.type == "cpu" for v in vals)


def test_closure_tensors_are_constants_and_data_is_followed():
    scale = torch.tensor(3.0)

    def fn(w):
        return ((w.data * scale + w) ** 2).sum(),

    gm = record(fn, [torch.ones(2)])
    assert any(n.op == "get_attr" for n in gm.graph.nodes)
    # t.data is the input's current value on every call, not the recorded one
    torch.testing.assert_close(gm(torch.full((2,), 2.0))[0], torch.tensor(128.0))


def test_random_ops_draw_again_on_each_replay():
    gm = record(lambda loc: (torch.normal(loc, 1.0),), [torch.zeros(4)])
    first, second = gm(torch.zeros(4))[0], gm(torch.zeros(4))[0]
    assert not torch.equal(first, second)


def test_in_place_ops_replay_in_order():
    def fn(x):
        y = x.clone()
        y.mul_(2).add_(1)
        return y * y,

    gm = record(fn, [torch.ones(3)])
    torch.testing.assert_close(gm(torch.full((3,), 2.0))[0], torch.full((3,), 25.0))


@pytest.mark.parametrize("read", [
    lambda x: x * 2 if x.sum() > 0 else x,        # bool(tensor)
    lambda x: x * float(x[0]),                    # float(tensor)
    lambda x: x * x.max().item(),                 # .item()
    lambda x: x * len([v for v in x.tolist() if v > 0]),  # .tolist()
    lambda x: x * x.numpy().sum(),                # .numpy()
    lambda x: x[x > 0].sum(),                     # a boolean mask: data-dependent shape
    lambda x: torch.nonzero(x).float().sum(),     # data-dependent shape
    lambda x: x * torch.equal(x, x),              # a host bool from an op
], ids=["bool", "float", "item", "tolist", "numpy", "mask", "nonzero", "equal"])
def test_reading_tensor_values_is_untraceable(read):
    with pytest.raises(Untraceable):
        record(lambda x: (read(x),), [torch.randn(4)])


def test_printing_a_tensor_is_not_a_value_read(capsys):
    def fn(x):
        y = x * 2
        print(f"y = {y}, first {y[0]:.1f}")
        return y + 1,

    gm = record(fn, [torch.ones(3)])
    assert "y = tensor([2., 2., 2.]), first 2.0" in capsys.readouterr().out
    torch.testing.assert_close(gm(torch.full((3,), 5.0))[0], torch.full((3,), 11.0))
    assert not any(n.target is torch.ops.aten._local_scalar_dense.default
                   for n in gm.graph.nodes)


def test_a_model_that_reads_values_runs_eagerly_with_the_reason():
    pyro.clear_param_store()
    data = torch.randn(10)

    def model(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        n = sum(1 for v in data.tolist() if v > 0)  # Python reads the data
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=data[:n])

    def guide(data):
        pass

    elbo = pyro_svi_ext.JitTrace_ELBO(background_compile=False)
    svi = pyro_svi_ext.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), elbo)
    with pytest.warns(RuntimeWarning, match="tolist"):
        for _ in range(3):
            svi.step(data)


def test_the_step_traces_with_make_fx_when_the_recorder_fails(monkeypatch):
    def broken(fn, inputs):
        raise RuntimeError("recorder bug")

    monkeypatch.setattr(step_module, "record", broken)
    pyro.clear_param_store()
    data = torch.randn(20)

    def model(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=data)

    def guide(data):
        pass

    elbo = pyro_svi_ext.JitTrace_ELBO(backend="eager")
    svi = pyro_svi_ext.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), elbo)
    for _ in range(3):
        svi.step(data)
    step = compiled_step(elbo)
    assert step.dynamic_reason is None and step.compiles == 1 and len(step.graphs) == 1


def test_pyros_stable_sampler_compiles_as_under_pyros_own_trace():
    """``LatentStableReparam`` draws through ``pyro/distributions/stable.py``, which
    checks ``near_hole.any()`` (a value read) unless ``torch._C._get_tracing_state()``
    says a trace runs, and writes ``Z.data[Z != Z] = 0`` and ``weights[~near_hole] =
    0.5`` (boolean-mask writes, recorded as ``masked_fill``): the step compiles and
    equals the eager one."""
    from pyro.infer.autoguide import AutoNormal
    from pyro.infer.reparam import LatentStableReparam

    data = torch.randn(20, generator=torch.Generator().manual_seed(0))

    @pyro.poutine.reparam(config={"x": LatentStableReparam()})
    def model(data):
        with pyro.plate("data", 20):
            x = pyro.sample("x", dist.Stable(1.5, 0.3))
            pyro.sample("y", dist.Normal(x, 1.0), obs=data)

    runs = []
    for elbo in (pyro_svi_ext.Trace_ELBO(), pyro_svi_ext.JitTrace_ELBO(backend="eager")):
        pyro.clear_param_store()
        torch.manual_seed(0)
        svi = pyro_svi_ext.SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.01}), elbo)
        runs.append([svi.step(data) for _ in range(6)])
    assert compiled_step(elbo).dynamic_reason is None and compiled_step(elbo).compiles == 1
    assert runs[1] == pytest.approx(runs[0], rel=1e-6)


def test_pyro_sees_a_trace_and_torch_does_not():
    from pyro_svi_ext.pyro_compat import pyro_sees_a_jit_trace

    as_pyro = {"__name__": "pyro.distributions.fake"}
    exec("def ask():\n    return torch._C._get_tracing_state()", {"torch": torch, **as_pyro},
         as_pyro)
    with pyro_sees_a_jit_trace():
        assert as_pyro["ask"]() is True
        assert torch._C._get_tracing_state() is None  # torch's (and our) callers
    assert as_pyro["ask"]() is None


def test_a_masked_write_through_a_zero_dim_mask_compiles():
    """``x.data[..., 0][x.eq(0).all(-1)] = 1`` in Pyro's ``safe_normalize`` (one vector:
    a 0-dim mask, which torch's indexing reads as a Python bool) is a masked fill."""
    from pyro.infer.autoguide import AutoNormal
    from pyro.infer.reparam import ProjectedNormalReparam

    @pyro.poutine.reparam(config={"x": ProjectedNormalReparam()})
    def model():
        loc = pyro.param("loc", torch.tensor([1.0, 0.5, 0.2]))
        x = pyro.sample("x", dist.ProjectedNormal(loc))
        pyro.sample("y", dist.Normal(x.sum(), 1.0), obs=torch.tensor(0.3))

    runs = []
    for elbo in (pyro_svi_ext.Trace_ELBO(), pyro_svi_ext.JitTrace_ELBO(backend="eager")):
        pyro.clear_param_store()
        torch.manual_seed(0)
        svi = pyro_svi_ext.SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.01}), elbo)
        runs.append([svi.step() for _ in range(6)])
    assert compiled_step(elbo).dynamic_reason is None
    assert runs[1] == pytest.approx(runs[0], rel=1e-6)


def test_a_stable_site_of_a_scalar_alpha_compiles():
    """A scalar ``alpha``: Pyro's sampler writes ``weights[~near_hole] = 0.5`` with a
    0-dim mask over a (2,)-shaped tensor (a masked fill over the leading dims: none)."""
    from pyro.infer.autoguide import AutoNormal
    from pyro.infer.reparam import LatentStableReparam

    @pyro.poutine.reparam(config={"x": LatentStableReparam()})
    def model():
        x = pyro.sample("x", dist.Stable(1.5, 0.3))
        pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor(0.2))

    runs = []
    for elbo in (pyro_svi_ext.Trace_ELBO(), pyro_svi_ext.JitTrace_ELBO(backend="eager")):
        pyro.clear_param_store()
        torch.manual_seed(0)
        svi = pyro_svi_ext.SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.01}), elbo)
        runs.append([svi.step() for _ in range(6)])
    assert compiled_step(elbo).dynamic_reason is None
    assert runs[1] == pytest.approx(runs[0], rel=1e-6)
