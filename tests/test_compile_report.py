"""What a compiled step did, readable: ``SVI.compile_report()`` and
``pyro-svi-ext run --compile --report``; a fallback names the line of the model that
caused it."""

from __future__ import annotations

import textwrap

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch

from pyro_svi_ext import SVI, JitTrace_ELBO, Trace_ELBO
from pyro_svi_ext.cli import main


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def guide(x):
    pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


def branching_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    if mu > 0:  # a Python branch on a tensor value: no static graph
        mu = mu * 1.0
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def test_the_report_counts_graphs_steps_and_checks():
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), JitTrace_ELBO(backend="eager"))
    for n in (5, 5, 5, 5, 7, 7):
        svi.step(torch.ones(n))
    report = svi.compile_report()
    assert report.steps == 6 and len(report.graphs) == 2
    assert [backend for backend, _, background in report.graphs] == ["eager", "eager"]
    assert len(report.recompiles) == 1 and "argument 0 changed" in report.recompiles[0].detail
    # steps 3-4 and 6 are the graphs' first uses: checked (eager steps beside the graph)
    assert report.checks == 3 and report.mismatches == 0
    assert report.graph_steps == 0 and report.fallback is None
    text = str(report)
    assert text.startswith("JitTrace_ELBO: 6 steps") and "compiling again" in text
    assert report.as_dict()["graphs"][0]["backend"] == "eager"
    assert SVI(model, guide, pyro.optim.Adam({}), Trace_ELBO()).compile_report() is None


def test_a_fallback_names_the_models_line(recwarn):
    svi = SVI(branching_model, guide, pyro.optim.Adam({"lr": 0.1}),
              JitTrace_ELBO(backend="eager"))
    for _ in range(3):
        svi.step(torch.ones(3))
    report = svi.compile_report()
    line = branching_model.__code__.co_firstlineno + 2
    assert report.fallback_at.startswith(f"{__file__}:{line} (branching_model)")
    assert "__bool__" in report.fallback and report.fallback_cause == "model"
    (warning,) = [w for w in recwarn if "running eagerly" in str(w.message)]
    assert f"test_compile_report.py:{line}" in str(warning.message)


def test_run_report_prints_each_compiled_step(tmp_path, capsys):
    script = tmp_path / "fit.py"
    script.write_text(textwrap.dedent("""
        import warnings
        import pyro, pyro.distributions as dist, pyro.optim, torch
        from pyro.infer import SVI, Trace_ELBO

        def model(x):
            mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
            if mu > 0:
                mu = mu * 1.0
            with pyro.plate("data", len(x)):
                pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)

        def guide(x):
            pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

        warnings.simplefilter("ignore")
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
        for _ in range(3):
            svi.step(torch.ones(3))
    """))
    assert main(["run", "--compile", "--report", str(script)]) == 0
    err = capsys.readouterr().err
    assert "1 compiled step(s)" in err
    assert "eager for good" in err and f"{script}:8 (model)" in err


def test_a_fallback_in_pyros_code_is_pyros():
    """A sequential plate with a subsample (Pyro's ``__iter__`` reads each random index
    as a Python int) falls back, and the report says whose code read the value."""
    def model(x):
        for i in pyro.plate("data", len(x), subsample_size=2):
            pyro.sample(f"obs_{i}", dist.Normal(0.0, 1.0), obs=x[i])

    def guide_(x):
        pyro.param("unused", torch.tensor(0.0))

    svi = SVI(model, guide_, pyro.optim.Adam({"lr": 0.1}), JitTrace_ELBO(backend="eager"))
    with pytest.warns(RuntimeWarning, match="running eagerly"):
        for _ in range(3):
            svi.step(torch.ones(4))
    report = svi.compile_report()
    assert report.fallback_cause == "pyro"
    assert "in Pyro's code, called from" in report.fallback_at and "(model)" in report.fallback_at
