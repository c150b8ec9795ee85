"""One process of the data-parallel tests: ``python distributed_worker.py SCENARIO OUT``
under ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` (a world of one without
them); writes what the scenario measured to ``OUT`` (JSON, one file per rank)."""

from __future__ import annotations

import json
import os
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal

import pyro_svi_ext as ext
from pyro_svi_ext.infer.distributed import DistributedSVI

N, D, K = 64, 3, 2


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g)
    p = torch.sigmoid(x @ torch.tensor([1.0, -2.0, 0.5]))
    y = (torch.rand(N, generator=g) < p).float()
    return x, y


def blr(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(D), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Bernoulli(logits=x @ w + b), obs=y)


def blr_indexed(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(D), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("data", N, subsample_size=16) as idx:
        pyro.sample("obs", dist.Bernoulli(logits=x[idx] @ w + b), obs=y[idx])


def gmm(x):
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(K)))
    locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([K]).to_event(1))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("obs", dist.Normal(locs[z], 1.0), obs=x)


def gmm_data():
    g = torch.Generator().manual_seed(2)
    return torch.cat([torch.randn(N // 2, generator=g) - 2, torch.randn(N // 2, generator=g) + 2])


def conjugate(y):
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(y)):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=y)


def run_fit(estimator, model, guide, args, steps, cls, seed=0, lr=0.05, **options):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = cls(model, guide, pyro.optim.Adam({"lr": lr}), estimator, **options)
    losses = [svi.step(*args) for _ in range(steps)]
    params = {k: v.detach().tolist() for k, v in pyro.get_param_store().items()}
    return {"losses": losses, "params": params, "compiles": svi.compiles}


def scenario_exact(cls):
    x, y = data()
    out = {}
    for name, est in (("trace", ext.Trace_ELBO()), ("jit_trace", ext.JitTrace_ELBO())):
        out[name] = run_fit(est, blr, AutoNormal(blr), (x, y), 20, cls, **_exact(cls))
    for name, est in (("enum", ext.TraceEnum_ELBO(max_plate_nesting=1)),
                      ("jit_enum", ext.JitTraceEnum_ELBO(max_plate_nesting=1))):
        guide = AutoDelta(pyro.poutine.block(gmm, expose=["weights", "locs"]))
        out[name] = run_fit(est, gmm, guide, (gmm_data(),), 20, cls, **_exact(cls))
    return out


def _exact(cls):
    return {"exact_draws": True} if cls is DistributedSVI else {}


SCENARIOS = {"exact": scenario_exact}


def main() -> None:
    scenario, out_path = sys.argv[1], sys.argv[2]
    cls = DistributedSVI if os.environ.get("WORLD_SIZE") else ext.SVI
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        result = SCENARIOS[scenario](cls)
    except Exception as err:  # the test reads the error and how long it took
        import traceback
        result = {"error": f"{type(err).__name__}: {err}", "type": type(err).__name__,
                  "traceback": traceback.format_exc()}
    result["seconds"] = time.perf_counter() - start
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
