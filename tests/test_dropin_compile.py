"""``install(compile=True)``: an unchanged Pyro program gets compiled steps from one
line; a model that cannot compile runs eagerly with one log line."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pyro
import pyro.distributions as dist
import pyro.infer
import pyro.optim
import pytest
import torch

import pyro_svi_ext
from pyro_svi_ext import dropin
from pyro_svi_ext.estimators.jit import COMPILED_FOR


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def guide(x):
    pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


def branchy(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    scale = 1.0 if float(mu.detach()) > -100 else 2.0  # a Python branch on a sampled value
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, scale), obs=x)


def train(model_fn, steps=6):
    """What an unchanged Pyro program writes (names looked up in pyro.infer)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = pyro.infer.Trace_ELBO()
    svi = pyro.infer.SVI(model_fn, guide, pyro.optim.Adam({"lr": 0.1}), elbo)
    losses = [svi.step(torch.ones(5)) for _ in range(steps)]
    return elbo, svi, losses


def test_compile_mode_binds_the_eager_names_to_compiled_steps():
    with dropin.installed(compile=True):
        for name, cls in COMPILED_FOR.items():
            assert getattr(pyro.infer, name) is cls
            assert issubclass(cls, getattr(pyro_svi_ext, name))  # isinstance still holds
        assert pyro.infer.JitTrace_ELBO is pyro_svi_ext.JitTrace_ELBO
        elbo, svi, losses = train(model)
        assert svi.wait_for_compiles(600)
        svi.step(torch.ones(5))
        assert svi.compiles == 1 and isinstance(elbo, pyro_svi_ext.Trace_ELBO)
    assert pyro.infer.Trace_ELBO is dropin.PYRO_CLASSES["Trace_ELBO"]
    with dropin.installed():
        _, _, eager = train(model)
    assert losses == pytest.approx(eager, rel=1e-5)


def test_an_inner_block_in_the_other_mode_restores_the_outer_one():
    with dropin.installed():
        with dropin.installed(compile=True):
            assert pyro.infer.Trace_ELBO is COMPILED_FOR["Trace_ELBO"]
        assert pyro.infer.Trace_ELBO is pyro_svi_ext.Trace_ELBO
    assert not dropin.is_installed()


def test_a_model_that_cannot_compile_runs_eagerly_with_one_log_line(caplog):
    with dropin.installed(compile=True), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with caplog.at_level(logging.WARNING, logger="pyro_svi_ext.compile.step"):
            _, _, losses = train(branchy, steps=5)
    (record,) = [r for r in caplog.records if "cannot be compiled" in r.getMessage()]
    assert record.getMessage().startswith("CompiledTrace_ELBO: running eagerly")
    with dropin.installed():
        _, _, eager = train(branchy, steps=5)
    assert losses == pytest.approx(eager, rel=1e-6)


def test_the_constructor_keeps_pyros_arguments_and_ignores_jit_warnings_by_default():
    cls = COMPILED_FOR["TraceEnum_ELBO"]
    elbo = cls(max_plate_nesting=1)
    assert elbo.max_plate_nesting == 1 and elbo.ignore_jit_warnings is True
    assert cls(ignore_jit_warnings=False).ignore_jit_warnings is False


def test_the_pytest_option_and_the_cli_flag_turn_compile_mode_on(tmp_path):
    test = tmp_path / "test_kind.py"
    test.write_text("import pyro.infer\n\ndef test_kind():\n"
                    "    assert type(pyro.infer.Trace_ELBO()).__name__ == "
                    "'CompiledTrace_ELBO'\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--pyro-svi-ext-compile", str(test)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    script = tmp_path / "script.py"
    script.write_text("import pyro.infer\nprint(type(pyro.infer.RenyiELBO()).__name__)\n")
    out = subprocess.run([sys.executable, "-m", "pyro_svi_ext", "run", "--compile",
                          str(script)], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "CompiledRenyiELBO", out.stderr
