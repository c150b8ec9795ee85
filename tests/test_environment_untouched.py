"""Nothing changed around: fits, eager and compiled, leave the user's ``os.environ`` as
it was (torch writes ``TORCHINDUCTOR_CACHE_DIR`` into it as it imports dynamo and looks
its cache up, and a pointer variable as it loads a compiled module; every subprocess the
user starts would inherit them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pyro_svi_ext.compile.background import inductor_cache_dir

SCRIPT = """
import json, os, sys
import pyro, pyro.distributions as dist, pyro.optim, torch
import pyro_svi_ext as ext
from pyro_svi_ext.compile.background import inductor_cache_dir

def model(x):
    m = pyro.sample("m", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 3):
        pyro.sample("x", dist.Normal(m, 1.0), obs=x)

def guide(x):
    pyro.sample("m", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

before = dict(os.environ)
changed = {}
for name, elbo in [("eager", ext.Trace_ELBO()),
                   ("compiled", ext.JitTrace_ELBO(background_compile=False))]:
    pyro.clear_param_store()
    svi = ext.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), elbo)
    svi.fit(4, torch.ones(3), progress_bar=False)
    inductor_cache_dir()
    after = dict(os.environ)
    changed[name] = {k: after.get(k) for k in set(before) | set(after)
                     if before.get(k) != after.get(k)}
    changed[name + " compiles"] = svi.compiles
print(json.dumps(changed))
"""


def test_eager_and_compiled_fits_leave_os_environ_as_it_was():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR_",
                                                                    "_TORCHINDUCTOR_"))}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    changed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert changed["compiled compiles"] >= 1  # a graph was compiled in this process
    assert changed["eager"] == {} and changed["compiled"] == {}


def test_the_inductor_cache_dir_is_found_without_writing_it(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    default = inductor_cache_dir()
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    assert default.name.startswith("torchinductor_")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert inductor_cache_dir() == tmp_path / "mine"
