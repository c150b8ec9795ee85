"""Compiled steps (Jit* estimators): exactly the eager step's numbers, guarded structure,
safe fallback for models that cannot be traced."""

import dataclasses
import subprocess
import sys
import types
import warnings

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from svi_runs import assert_same_run, compiled_step, run_svi

import pyro_svi_ext
from compat_matrix.catalogue import CASES, ENUM_CASES, GRAPH_CASES, pick
from pyro_svi_ext import (
    SVI,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceGraph_ELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    registry,
)
from pyro_svi_ext.compile import StructureChangedError
from pyro_svi_ext.compile.step import RecompileWarning

EAGER_OF = {JitTrace_ELBO: Trace_ELBO, JitTraceEnum_ELBO: TraceEnum_ELBO,
            JitTraceGraph_ELBO: TraceGraph_ELBO,
            pyro_svi_ext.JitRenyiELBO: pyro_svi_ext.RenyiELBO}
# every shape of the parity suites compiles (decaying-average baselines as side state
# written in place), but for those tagged "untraceable"
COMPILABLE = ([(JitTrace_ELBO, c) for c in CASES]
              + [(JitTraceGraph_ELBO, c) for c in CASES + GRAPH_CASES
                 if "untraceable" not in c.tags]
              + [(JitTraceEnum_ELBO, c) for c in ENUM_CASES])


@pytest.mark.parametrize("backend", ["eager"])
@pytest.mark.parametrize("cls, case", COMPILABLE, ids=lambda x: getattr(x, "name", None)
                         or getattr(x, "__name__", str(x)))
def test_compiled_steps_equal_eager_steps(cls, case, backend):
    elbo = cls(backend=backend, **case.elbo_kwargs)
    ours = run_svi(elbo, case)
    assert compiled_step(elbo).graphs, compiled_step(elbo).dynamic_reason
    assert_same_run(ours, run_svi(EAGER_OF[cls](**case.elbo_kwargs), case))


@pytest.mark.parametrize("case", [c for c in GRAPH_CASES if "untraceable" in c.tags],
                         ids=lambda c: c.name)
def test_untraceable_shapes_fall_back_to_the_eager_numbers(case):
    elbo = JitTraceGraph_ELBO(backend="eager", **case.elbo_kwargs)
    with pytest.warns(RuntimeWarning, match="cannot be compiled"):
        ours = run_svi(elbo, case)
    assert not compiled_step(elbo).graphs
    assert_same_run(ours, run_svi(TraceGraph_ELBO(**case.elbo_kwargs), case))


def test_inductor_step_equals_eager_step():
    (case,) = [c for c in CASES if c.name == "nonreparam_in_plate"]
    elbo = JitTrace_ELBO(backend="inductor", background_compile=False)
    ours = run_svi(elbo, case, steps=4)
    assert compiled_step(elbo).graphs
    assert_same_run(ours, run_svi(Trace_ELBO(), case, steps=4))


@pytest.mark.parametrize("optim", [
    lambda: pyro.optim.ClippedAdam({"lr": 0.05, "clip_norm": 0.5}),
    lambda: pyro.optim.SGD({"lr": 0.01, "momentum": 0.9}),
    lambda: pyro.optim.Adam(lambda name, p: {"lr": 0.2 if "loc" in name else 0.01}),
], ids=["clipped_adam", "sgd_momentum", "per_param_args"])
def test_optimizer_semantics_are_kept(optim):
    (case,) = [c for c in CASES if c.name == "plate"]
    ours = run_svi(JitTrace_ELBO(backend="eager"), case, optim(), steps=8)
    assert_same_run(ours, run_svi(Trace_ELBO(), case, optim(), steps=8))


def branchy_model(data):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    scale = 1.0 if data.sum() > 0 else 3.0  # Python branch on a tensor value
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(mu, scale), obs=data)


def mu_guide(data):
    pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


def _branchy_losses(elbo, data):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(branchy_model, mu_guide, pyro.optim.Adam({"lr": 0.1}), elbo)
    return [svi.step(d) for d in data]


def test_value_dependent_branching_never_gives_a_wrong_answer():
    """The data flip the model's Python branch; the compiled estimator notices it
    cannot trace the model and gives the eager losses, branch for branch."""
    data = [torch.ones(4), -torch.ones(4), torch.ones(4)]
    with pytest.warns(RuntimeWarning, match="cannot be compiled"):
        ours = _branchy_losses(JitTrace_ELBO(backend="eager"), data)
    assert ours == pytest.approx(_branchy_losses(Trace_ELBO(), data), rel=1e-6)
    strict = JitTrace_ELBO(backend="eager", on_dynamic="raise")
    strict.loss_and_grads(branchy_model, mu_guide, data[0])  # first call: eager
    with pytest.raises(StructureChangedError, match="cannot be compiled"):
        strict.loss_and_grads(branchy_model, mu_guide, data[0])


def plate_model(data):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=data)


def test_a_shape_change_recompiles_with_a_warning_naming_it_or_raises_by_option():
    elbo = JitTrace_ELBO(backend="eager")
    pyro.set_rng_seed(1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for n in (3, 3, 5, 5, 3):
            loss = elbo.loss_and_grads(plate_model, mu_guide, torch.ones(n))
            assert isinstance(loss, float)
    (again,) = [w for w in seen if issubclass(w.category, RecompileWarning)]
    assert "compiling again: argument 0 changed from ((3,)" in str(again.message)
    assert "to ((5,)" in str(again.message)
    assert compiled_step(elbo).compiles == 2
    strict = JitTrace_ELBO(backend="eager", on_change="raise")
    strict.loss_and_grads(plate_model, mu_guide, torch.ones(3))
    strict.loss_and_grads(plate_model, mu_guide, torch.ones(3))
    with pytest.raises(StructureChangedError, match=r"argument 0 changed from \(\(3,\)"):
        strict.loss_and_grads(plate_model, mu_guide, torch.ones(4))


def test_pyro_module_networks_are_compiled_and_keep_their_own_parameters():
    (case,) = [c for c in CASES if c.name == "pyro_module_amortized"]
    pyro.clear_param_store()
    model, guide, args = case.build()
    elbo = JitTrace_ELBO(backend="eager")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    for _ in range(3):
        svi.step(*args)
    assert compiled_step(elbo).graphs
    encoder = guide.__closure__[0].cell_contents  # the nn.Linear the guide registers
    store = pyro.get_param_store()
    assert encoder.weight is store._params["encoder$$$weight"]
    assert type(encoder.weight) is torch.nn.Parameter  # not a traced stand-in


def test_state_outside_the_param_store_falls_back_to_eager_exactly():
    """A network registered through a reference to pyro.module taken before tracing
    keeps its own weights in the trace: the check against the eager step catches it."""
    register = pyro.module
    torch.manual_seed(3)
    net = torch.nn.Linear(1, 1)
    x = torch.tensor([0.3, -0.4, 1.2])

    def model(x):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide(x):
        register("net", net)
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(net(x.unsqueeze(-1)).squeeze(-1), 1.0))

    case = types.SimpleNamespace(build=lambda: (model, guide, (x,)))
    elbo = JitTrace_ELBO(backend="eager")
    with pytest.warns(RuntimeWarning, match="disagrees with the eager step"):
        ours = run_svi(elbo, case)
    torch.manual_seed(3)
    net.load_state_dict(torch.nn.Linear(1, 1).state_dict())
    assert_same_run(ours, run_svi(Trace_ELBO(), case))


def test_nonfinite_loss_is_caught_in_compiled_steps():
    elbo = JitTrace_ELBO(backend="eager")
    svi = SVI(plate_model, mu_guide, pyro.optim.Adam({"lr": 0.1}), elbo)
    svi.step(torch.ones(3))
    svi.step(torch.ones(3))
    before = pyro.param("loc").item()
    with pytest.raises(pyro_svi_ext.NonFiniteLossError, match="model:x"):
        svi.step(torch.tensor([1.0, float("inf"), 0.0]))
    assert pyro.param("loc").item() == before


@pytest.mark.parametrize("cls, case", [
    (JitTrace_ELBO, next(c for c in CASES if c.name == "nonreparam_in_plate")),
    (JitTraceGraph_ELBO, next(c for c in GRAPH_CASES if c.name == "sequential_chain")),
    (JitTraceEnum_ELBO, next(c for c in ENUM_CASES if c.name == "hmm_history2")),
    (pyro_svi_ext.JitRenyiELBO, dataclasses.replace(
        next(c for c in CASES if c.name == "nonreparam_in_plate"),
        elbo_kwargs={"alpha": 0.5, "num_particles": 3})),
], ids=lambda x: getattr(x, "name", None) or getattr(x, "__name__", str(x)))
def test_torchscript_backend_is_exact_and_says_once_it_is_legacy(cls, case, recwarn):
    from pyro_svi_ext.compile import backends

    backends._LEGACY_NOTICE[0] = False
    elbo = cls(backend="jit", **case.elbo_kwargs)
    ours = run_svi(elbo, case, steps=6)
    assert compiled_step(elbo).graphs, compiled_step(elbo).dynamic_reason
    assert isinstance(next(iter(compiled_step(elbo).graphs.values())).run.module,
                      torch.jit.ScriptModule)
    assert_same_run(ours, run_svi(EAGER_OF[cls](**case.elbo_kwargs), case, steps=6))
    run_svi(cls(backend="jit", **case.elbo_kwargs), case, steps=3)  # compiles again
    legacy = [w for w in recwarn if "legacy" in str(w.message)]
    assert len(legacy) == 1
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)
                and "torch.jit" in str(w.message)]


def test_jit_estimators_are_registered_as_compiled():
    for name in ("JitTrace_ELBO", "jittraceenum_elbo", "JitTraceGraph_ELBO"):
        (reg,) = [r for r in pyro_svi_ext.available() if r.cls is pyro_svi_ext.get(name)]
        assert reg.capabilities.compiled
    with pytest.raises(KeyError, match="no compile backend named 'tvm'"):
        JitTrace_ELBO(backend="tvm")


def test_a_plugin_backend_is_used_by_name():
    calls = []

    def counting(gm, example_inputs):
        calls.append(len(example_inputs))
        return gm

    def hook(registry):
        registry.add("counting", counting, "counts compilations")

    hook.pyro_svi_ext_impl = True
    plugin = types.SimpleNamespace(pyro_svi_ext_register_backends=pyro_svi_ext.hookimpl(hook))
    registry.reload(extra_plugins=[plugin])
    try:
        elbo = JitTrace_ELBO(backend="counting")
        for _ in range(3):
            elbo.loss_and_grads(plate_model, mu_guide, torch.ones(3))
        assert calls == [1 + 1]  # one param, one tensor argument; compiled once
    finally:
        registry.reload()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_compiled_step_follows_the_device(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    data = torch.ones(3, device=device)

    def guide(data):
        pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(0.0, device=device)), 1.0))

    def model(data):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, device=device), 1.0))
        with pyro.plate("data", len(data), device=device):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=data)

    elbo = JitTrace_ELBO(backend="eager")
    for _ in range(3):
        elbo.loss_and_grads(model, guide, data)
    assert compiled_step(elbo).graphs
    assert pyro.param("loc").unconstrained().grad.device.type == device


@pytest.mark.parametrize("failure", ["raises", "inexact"])
def test_auto_backend_drops_a_failing_backend_and_stays_exact(failure, monkeypatch):
    from pyro_svi_ext.compile import backends

    def broken(gm, example_inputs):
        if failure == "raises":
            raise RuntimeError("no C++ compiler")

        def wrong(*inputs):
            outputs = gm(*inputs)
            return (outputs[0] + 1.0, *outputs[1:])
        return wrong

    monkeypatch.setitem(backends.BACKENDS, "inductor", backends.Backend("inductor", broken))
    (case,) = [c for c in CASES if c.name == "nested_plates"]
    elbo = JitTrace_ELBO(background_compile=False)  # backend="auto"
    with pytest.warns(RuntimeWarning, match="compile backends failed: inductor: .*using 'jit'"):
        ours = run_svi(elbo, case)
    assert compiled_step(elbo).backend.name == "jit" and compiled_step(elbo).graphs
    assert_same_run(ours, run_svi(Trace_ELBO(), case))


def test_inductor_compiles_large_graphs_with_a_lifted_recursion_limit():
    """Inductor's memory planner recurses with the graph's size; the limit is lifted for
    the compile only, and the caller's limit comes back."""
    import sys

    from pyro_svi_ext.compile.backends import _recursion_limit_for

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    for _ in range(9000):
        x = graph.call_function(torch.neg, (x,))
    graph.output(x)
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    before = sys.getrecursionlimit()
    with _recursion_limit_for(gm):
        assert sys.getrecursionlimit() >= max(before, len(gm.graph.nodes))
    assert sys.getrecursionlimit() == before


def test_a_compile_is_logged_with_its_backend_and_time(caplog):
    (case,) = pick("plate")
    with caplog.at_level("INFO", logger="pyro_svi_ext.compile.step"):
        run_svi(JitTrace_ELBO(backend="eager"), case, steps=3)
    (record,) = [r for r in caplog.records if "compiled the" in r.getMessage()]
    assert "whole SVI step with backend 'eager' in" in record.getMessage()


def test_a_fallback_chain_is_one_warning_naming_each_backend(monkeypatch):
    from pyro_svi_ext.compile import backends

    def broken(reason):
        def compile_(gm, example_inputs):
            raise RuntimeError(reason)
        return compile_

    monkeypatch.setitem(backends.BACKENDS, "inductor",
                        backends.Backend("inductor", broken("no C++ compiler")))
    monkeypatch.setitem(backends.BACKENDS, "jit", backends.Backend("jit", broken("old")))
    (case,) = pick("plate")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run_svi(JitTrace_ELBO(background_compile=False), case, steps=3)
    (chain,) = [w for w in seen if "compile backends failed" in str(w.message)]
    assert "inductor: RuntimeError: no C++ compiler; jit: RuntimeError: old; using " \
        "'eager'" in str(chain.message)


@pytest.mark.parametrize("backend", ["auto", "jit"])
def test_compiled_estimators_run_under_warnings_as_errors(backend):
    script = f"""
import warnings, pyro, torch, pyro.distributions as dist, pyro.optim
from pyro_svi_ext import SVI, JitTrace_ELBO
def model(x):
    mu = pyro.sample("mu", dist.Normal(0., 1.))
    with pyro.plate("d", 3):
        pyro.sample("x", dist.Normal(mu, 1.), obs=x)
def guide(x):
    pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(0.)), 1.))
svi = SVI(model, guide, pyro.optim.Adam({{"lr": 0.1}}), JitTrace_ELBO(backend={backend!r}))
for _ in range(4):
    svi.step(torch.ones(3))
assert svi.wait_for_compiles(600)  # a compile in the background ends
svi.step(torch.ones(3))            # and is swapped in
step, = svi.loss_fn._steps.values()
assert step.graphs and step.dynamic_reason is None, step.dynamic_reason
"""
    proc = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
