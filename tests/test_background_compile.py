"""Compiling in the background: no step waits for the compiler, the compiled graph is
checked and swapped in once ready, and the run equals the blocking one where the
switch-over step is the same."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.distributions import constraints
from svi_runs import compiled_step

from pyro_svi_ext import SVI, JitTrace_ELBO, JitTraceEnum_ELBO
from pyro_svi_ext.compile import backends


def model(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)


def guide(x, y):
    loc = pyro.param("loc", torch.zeros(3))
    scale = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
    pyro.sample("w", dist.Normal(loc, scale).to_event(1))


def data(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5]) + 0.5 * torch.randn(n, generator=g)


def fit(elbo, steps: int, wait_after: int | None = None, batches=None):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    batches = batches or [data()]
    losses = []
    for i in range(steps):
        losses.append(svi.step(*batches[i % len(batches)]))
        if wait_after is not None and i + 1 == wait_after:
            assert svi.wait_for_compiles(600)
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return svi, losses, params


def test_the_run_equals_the_blocking_run_when_the_switch_over_step_is_the_same():
    _, blocking_losses, blocking = fit(JitTrace_ELBO(background_compile=False), 10)
    svi, losses, params = fit(JitTrace_ELBO(), 10, wait_after=2)
    assert compiled_step(svi.loss_fn).graphs.graphs  # the compiled graph ran steps 3-10
    assert losses == blocking_losses
    for name in blocking:
        assert torch.equal(params[name], blocking[name]), name


def test_without_waiting_the_run_matches_the_blocking_run_up_to_rounding():
    _, blocking_losses, blocking = fit(JitTrace_ELBO(background_compile=False), 30)
    svi, losses, params = fit(JitTrace_ELBO(), 30)
    assert losses == pytest.approx(blocking_losses, rel=1e-4, abs=1e-4)
    for name in blocking:
        torch.testing.assert_close(params[name], blocking[name], rtol=1e-4, atol=1e-5)
    assert svi.wait_for_compiles(600)
    svi.step(*data())
    assert compiled_step(svi.loss_fn).graphs.graphs and svi.compiles == 1


@pytest.fixture
def gated_compiles(tmp_path, monkeypatch):
    """Compile processes wait for a file before they compile."""
    gate = tmp_path / "open"
    monkeypatch.setenv("PYRO_SVI_EXT_COMPILE_GATE", str(gate))
    yield gate
    gate.touch()


def test_no_step_waits_for_the_compiler(gated_compiles):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = JitTrace_ELBO(backend="inductor")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    x, y = data()
    for _ in range(20):  # the compile cannot end before the gate opens: all eager
        svi.step(x, y)
    step = compiled_step(elbo)
    assert step.pending and not step.graphs.graphs and step.steps == 20
    loc_before = pyro.param("loc").detach().clone()
    gated_compiles.touch()
    assert svi.wait_for_compiles(600)
    svi.step(x, y)
    assert not step.pending and step.graphs.graphs
    assert not torch.equal(pyro.param("loc"), loc_before)  # the compiled step updates


def test_the_step_lends_a_core_to_the_compile_process_and_takes_it_back(gated_compiles):
    from pyro_svi_ext.compile.background import _cores

    before = torch.get_num_threads()
    threads = max(2, _cores())  # no core left for a child
    torch.set_num_threads(threads)
    try:
        pyro.clear_param_store()
        elbo = JitTrace_ELBO(backend="inductor")
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
        x, y = data()
        for _ in range(3):
            svi.step(x, y)
        assert compiled_step(elbo).pending  # the child waits at the gate
        assert torch.get_num_threads() == max(1, _cores() - 1)
        gated_compiles.touch()
        assert svi.wait_for_compiles(600)
        assert torch.get_num_threads() == threads
        svi.step(x, y)
        assert compiled_step(elbo).graphs.graphs and torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_compile_children_are_capped_per_process_and_stop_with_their_step(
        gated_compiles, monkeypatch):
    import gc

    from pyro_svi_ext.compile import background

    monkeypatch.setattr(background, "MAX_CHILDREN", 1)
    x, y = data()

    def started_svi():
        elbo = JitTrace_ELBO(backend="inductor")
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
        for _ in range(3):
            svi.step(x, y)
        return svi, next(iter(compiled_step(elbo).pending.values())).job

    pyro.clear_param_store()
    first, first_job = started_svi()
    second, second_job = started_svi()
    assert first_job._proc is not None and second_job._proc is None  # waits for a slot
    assert len(background._LIVE) == 1
    child = first_job._proc
    del first, first_job
    gc.collect()
    assert child.poll() is not None  # the collected step's child was stopped
    second.step(x, y)  # polls: the slot is free, the waiting compile starts
    assert second_job._proc is not None and len(background._LIVE) == 1
    gated_compiles.touch()
    assert second.wait_for_compiles(600)
    second.step(x, y)
    assert compiled_step(second.loss_fn).graphs.graphs


def test_a_background_compile_that_fails_falls_back_to_the_next_backend(monkeypatch):
    def broken(gm, inputs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setitem(backends.BUILTIN_BACKENDS, "inductor",
                        backends.Backend("inductor", broken))
    elbo = JitTrace_ELBO()  # auto: inductor, then jit, then eager
    with pytest.warns(RuntimeWarning, match="inductor: RuntimeError: no C.. compiler.*"
                                            "using 'jit'"):
        fit(elbo, 4, wait_after=2)
    assert compiled_step(elbo).dynamic_reason is None


def test_a_loader_with_a_partial_last_batch_compiles_twice():
    x, y = data(300)
    batches = [(x[i:i + 128], y[i:i + 128]) for i in (0, 128, 256)]  # 128, 128, 44
    assert [len(b[0]) for b in batches] == [128, 128, 44]
    elbo = JitTrace_ELBO()
    with pytest.warns(RuntimeWarning, match="compiling again"):
        svi, _, _ = fit(elbo, 3 * len(batches) * 3, batches=batches)
    assert svi.wait_for_compiles(600)
    for batch in batches:
        svi.step(*batch)
    assert svi.compiles == 2 and len(compiled_step(elbo).graphs) == 2


def test_the_compile_count_is_zero_for_an_eager_estimator():
    from pyro_svi_ext import Trace_ELBO

    svi, _, _ = fit(Trace_ELBO(), 3)
    assert svi.compiles == 0 and svi.wait_for_compiles(0)


@pytest.mark.slow  # about a minute on 2 cores: the interim-graph test covers the path
def test_an_enumerated_hmm_trains_while_it_compiles(tmp_path, monkeypatch):
    """The case that motivated it: a long enumerated chain (a minute or more of cold
    inductor compile); 30 steps run meanwhile and give the eager numbers."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # cold
    T = 40
    obs = torch.randn(T)

    def hmm(obs):
        probs = pyro.param("probs", torch.full((3, 3), 1 / 3), constraint=constraints.simplex)
        locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.0]))
        z = 0
        for t in pyro.markov(range(T)):
            z = pyro.sample(f"z_{t}", dist.Categorical(probs[z]),
                            infer={"enumerate": "parallel"})
            pyro.sample(f"x_{t}", dist.Normal(locs[z], 1.0), obs=obs[t])

    def run(elbo, steps):
        pyro.clear_param_store()
        svi = SVI(hmm, lambda obs: None, pyro.optim.Adam({"lr": 0.05}), elbo)
        return [svi.step(obs) for _ in range(steps)], svi

    from pyro_svi_ext import TraceEnum_ELBO

    eager, _ = run(TraceEnum_ELBO(max_plate_nesting=0), 30)
    background, svi = run(JitTraceEnum_ELBO(max_plate_nesting=0), 30)
    assert background == pytest.approx(eager, rel=1e-4)
    assert svi.wait_for_compiles(900)
    svi.step(obs)
    step = compiled_step(svi.loss_fn)
    assert step.swaps and not step.pending
    # the child's compile is recorded: a later run of a large graph (over LARGE_GRAPH
    # nodes) compiles in place from the cache instead of in the background
    from pyro_svi_ext.compile import step as step_module

    monkeypatch.setattr(step_module, "LARGE_GRAPH", 500)
    again, svi = run(JitTraceEnum_ELBO(max_plate_nesting=0), 3)
    step = compiled_step(svi.loss_fn)
    assert not step.pending and len(step.graphs) == 1 and not step.swaps
    assert again == pytest.approx(eager[:3], rel=1e-4)


def test_a_graph_sent_to_a_compile_process_keeps_its_random_draws_and_ops():
    """Rebuilt from plain data, not from pickle: a pickled GraphModule is traced again
    on loading, which freezes ``aten.empty`` + ``aten.normal_`` into one constant draw."""
    import operator
    import pickle

    from torch.fx.experimental.proxy_tensor import make_fx

    from pyro_svi_ext.compile.background import load_portable, portable

    def f(loc):
        return loc + torch.empty(3).normal_()

    gm = make_fx(f)(torch.zeros(3))
    rebuilt = load_portable(pickle.loads(pickle.dumps(portable(gm))))
    torch.manual_seed(1)
    a = gm(torch.zeros(3))
    torch.manual_seed(1)
    assert torch.equal(rebuilt(torch.zeros(3)), a)
    assert not torch.equal(rebuilt(torch.zeros(3)), a)  # a new draw each call
    frozen = pickle.loads(pickle.dumps(gm))  # what the module's own pickling does
    assert torch.equal(frozen(torch.zeros(3)), frozen(torch.zeros(3)))
    # Python callables (operator.getitem on a tuple output) travel by name
    indexing = torch.fx.symbolic_trace(lambda x: operator.getitem(x, 1))
    assert torch.equal(load_portable(portable(indexing))(torch.arange(3.0)), torch.tensor(1.0))


def test_an_interim_torchscript_graph_runs_while_inductor_compiles(gated_compiles):
    _, eager_losses, eager = fit(JitTrace_ELBO(backend="eager"), 12)
    svi, losses, params = fit(JitTrace_ELBO(), 12)  # auto: inductor behind a closed gate
    step = compiled_step(svi.loss_fn)
    (interim,) = step.graphs.values()
    assert step.pending and interim.run is not None  # steps 3-12 ran the interim graph
    assert losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-4)
    for name in eager:
        torch.testing.assert_close(params[name], eager[name], rtol=1e-5, atol=1e-6)
    gated_compiles.touch()
    assert svi.wait_for_compiles(600)
    svi.step(*data())
    (swapped,) = step.graphs.values()
    assert swapped is not interim and not step.pending and step.swaps


def test_a_shape_that_changes_every_call_starts_at_most_two_compiles(gated_compiles):
    x, y = data(40)
    batches = [(x[:n], y[:n]) for n in range(10, 18)]  # eight shapes
    from pyro_svi_ext import Trace_ELBO

    _, eager_losses, _ = fit(Trace_ELBO(), 16, batches=batches)
    with pytest.warns(RuntimeWarning, match="compiling again"):
        svi, losses, _ = fit(JitTrace_ELBO(backend="inductor"), 16, batches=batches)
    step = compiled_step(svi.loss_fn)
    assert len(step.pending) == 2 and svi.compiles == 2  # the others ran eagerly
    assert losses == pytest.approx(eager_losses, rel=1e-5)


_ORPHAN_PARENT = """
import os, sys
sys.path.insert(0, {tests!r})
import pyro, pyro.optim
from pyro_svi_ext import SVI, JitTrace_ELBO
from test_background_compile import data, guide, model
elbo = JitTrace_ELBO(backend="inductor")
svi = SVI(model, guide, pyro.optim.Adam({{"lr": 0.05}}), elbo)
x, y = data()
for _ in range(3):
    svi.step(x, y)
step = next(iter(elbo._steps.values()))
print(next(iter(step.pending.values())).job._proc.pid, flush=True)
os._exit(0)  # no exit handler runs
"""


def _running(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"  # a zombie has ended (an init that does not reap keeps it)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
def test_a_compile_process_ends_when_its_training_process_dies(gated_compiles):
    parent = subprocess.run(
        [sys.executable, "-c", _ORPHAN_PARENT.format(tests=str(Path(__file__).parent))],
        capture_output=True, text=True, timeout=300)
    child = int(parent.stdout.split()[-1])
    deadline = time.monotonic() + 30
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    still = _running(child)
    if still:
        os.kill(child, 9)
    assert not still, "the compile process outlived its parent"


_SLEEPER = """
import os, subprocess
if os.environ.get("PYRO_SVI_EXT_TEST_SLEEPER") and os.environ.get("PYRO_SVI_EXT_PARENT_PID"):
    # in a compile child: start a long-running process, as inductor starts cc1plus
    sleeper = subprocess.Popen(["sleep", "600"])
    with open(os.environ["PYRO_SVI_EXT_TEST_SLEEPER"], "w") as f:
        f.write(str(sleeper.pid))
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("how", ["killed", "os._exit"])
def test_a_compile_childs_own_processes_end_with_the_training_process(gated_compiles,
                                                                       tmp_path, how):
    """The compilers a compile child starts (here a stand-in, started from the child's
    sitecustomize) end with it when the training process dies, by SIGKILL or by
    ``os._exit``."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_SLEEPER)
    marker = tmp_path / "sleeper.pid"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
        PYRO_SVI_EXT_TEST_SLEEPER=str(marker))
    script = _ORPHAN_PARENT.format(tests=str(Path(__file__).parent))
    if how == "killed":
        script = script.replace("os._exit(0)  # no exit handler runs",
                                "import time; time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True, env=env)
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    sleeper = int(marker.read_text())
    assert _running(sleeper)
    if how == "killed":
        parent.kill()
    parent.wait(60)
    deadline = time.monotonic() + 30
    while (_running(child) or _running(sleeper)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in (child, sleeper) if _running(pid)]
    for pid in left:
        os.kill(pid, 9)
    assert not left, "a compile process or its compiler outlived the training process"
