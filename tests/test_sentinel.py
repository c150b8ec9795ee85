"""The sentinel: a compiled graph is now and then run beside the eager step and
compared, which catches what no guard sees (a global the model reads), with no side
effect of its own and a schedule that follows the measured cost."""

from __future__ import annotations

import logging
import math
import time
import warnings

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from svi_runs import compiled_step

from pyro_svi_ext import SVI, JitTrace_ELBO, Trace_ELBO
from pyro_svi_ext.compile import sentinel
from pyro_svi_ext.compile.layout import StepLayout
from pyro_svi_ext.compile.sentinel import Sentinel
from pyro_svi_ext.compile.tracer import Graph

SETTINGS = {"prior_scale": 1.0}


def model(data):
    mu = pyro.sample("mu", dist.Normal(0.0, SETTINGS["prior_scale"]))  # a global read
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)


def guide(data):
    pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


def _run(elbo, steps: int, change_at: int):
    pyro.clear_param_store()
    torch.manual_seed(0)
    SETTINGS["prior_scale"] = 1.0
    data = torch.randn(30, generator=torch.Generator().manual_seed(2)) + 1.0
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), elbo)
    losses = []
    for i in range(steps):
        if i == change_at:
            SETTINGS["prior_scale"] = 0.1  # what the user changes between steps
        losses.append(svi.step(data))
    return losses, svi


def test_a_changed_global_is_caught_logged_and_traced_again(caplog, monkeypatch):
    # checks at each graph's first use, then every 3 uses (a fixed schedule)
    monkeypatch.setattr(Sentinel, "scheduled", lambda self, graph, _: _every(self, graph, 3))
    eager, _ = _run(Trace_ELBO(), 16, change_at=6)
    with caplog.at_level(logging.WARNING, logger="pyro_svi_ext"):
        compiled, svi = _run(JitTrace_ELBO(backend="eager"), 16, change_at=6)
    (warning,) = [r for r in caplog.records if "disagreed with the eager step" in r.message]
    assert "the loss" in warning.message and warning.levelno == logging.WARNING
    # graph uses 1, 4, 7 are checked: steps 3, 6 and 9; the change before step 7 is
    # caught at step 9
    assert "at step 9 " in warning.message
    assert compiled[:6] == pytest.approx(eager[:6], rel=1e-5)
    report = svi.compile_report()
    # traced again at step 10; the new graph reads the new global: its own checks agree
    assert svi.compiles == 2 and report.mismatches == 1 and report.checks >= 5


def _every(self, graph, n):
    self.checks += 1
    graph.next_check = graph.uses + n


def test_checks_are_spaced_by_the_measured_cost():
    watch = Sentinel()
    graph = Graph(None, StepLayout(0, 0, 0, 0, (), True), [])
    due = [watch.due(graph, []) for _ in range(2)]
    assert due == [True, True]  # dense early
    watch.eager_seconds = 2e-3
    watch._mark = (time.perf_counter() - 0.4, 0)  # 10,000 graph steps took 0.4 s
    watch.scheduled(graph, 10_000)
    assert watch.graph_seconds == pytest.approx(4e-5, rel=0.1)  # an eager step is 50x
    spacing = graph.next_check - graph.uses
    expected = (2e-3 + watch.graph_seconds) / watch.graph_seconds / sentinel.BUDGET
    assert spacing == math.ceil(expected) and 4500 < spacing < 5700  # 1% of a long run
    assert sum(watch.due(graph, []) for _ in range(spacing)) == 1


def test_a_new_float_value_is_checked_twice_then_by_schedule():
    watch = Sentinel()
    watch.eager_seconds, watch.graph_seconds = 1.0, 1e-6  # checks otherwise far apart
    graph = Graph(None, StepLayout(0, 0, 0, 0, (), True, 0, (0,)), [], traced_floats=(0.5,))
    checked = []
    for i in range(7):
        checked.append(watch.due(graph, [0.5 + i / 100]))
        if checked[-1]:
            watch.scheduled(graph, graph.uses)
    # uses 1 and 2 (early), then two uses with new values, then the schedule's spacing
    assert checked == [True, True, True, True, False, False, False]


def test_a_check_moves_no_module_state_and_no_random_state():
    """Every use checked: the run is the eager run, integer state and generator
    included."""
    def run(elbo):
        pyro.clear_param_store()
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2),
                                  torch.nn.Dropout(0.3))
        x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))

        def m(x):
            with pyro.plate("data", 16):
                pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))

        def g(x):
            pyro.module("net", net)
            with pyro.plate("data", 16):
                pyro.sample("z", dist.Normal(net(x), 1.0).to_event(1))

        svi = SVI(m, g, pyro.optim.Adam({"lr": 0.01}), elbo)
        losses = [svi.step(x) for _ in range(8)]
        return losses, int(net[1].num_batches_tracked), torch.get_rng_state()

    eager = run(Trace_ELBO())
    elbo = JitTrace_ELBO(backend="eager")
    with_checks = run(elbo)
    assert compiled_step(elbo).report.checks == 2  # uses 1 and 2 of the graph
    assert with_checks[1] == eager[1] == 8 and torch.equal(with_checks[2], eager[2])
    assert with_checks[0] == pytest.approx(eager[0], rel=1e-4)


def test_params_sharing_memory_run_eagerly_as_pyro_does():
    """``AutoNormalMessenger`` of a ``PyroModule`` model starts its ``locs.x`` on the
    model's ``x_loc`` without a copy: two params, one memory, updated once for each by
    the eager step. The sentinel found the compiled graph off there (Pyro's
    ``test_median_module``); the step now says so at its trace and runs eagerly."""
    from pyro.infer.autoguide import AutoNormalMessenger
    from pyro.nn import PyroModule, PyroParam

    class Model(PyroModule):
        def __init__(self):
            super().__init__()
            self.x_loc = torch.nn.Parameter(torch.tensor(1.0))
            self.x_scale = PyroParam(torch.tensor(0.1), dist.constraints.positive)

        def forward(self):
            x = pyro.sample("x", dist.Normal(self.x_loc, self.x_scale))
            pyro.sample("z", dist.Normal(1.0, 0.1), obs=x)

    runs = []
    for elbo in (Trace_ELBO(), JitTrace_ELBO(backend="eager")):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = Model()
        svi = SVI(model, AutoNormalMessenger(model), pyro.optim.Adam({"lr": 0.005}), elbo)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs.append([svi.step() for _ in range(6)])
    assert runs[1] == runs[0]
    report = svi.compile_report()
    assert "share memory" in report.fallback and report.mismatches == 0
