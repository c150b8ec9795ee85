"""One process of the data-parallel tests: ``python distributed_worker.py SCENARIO OUT``
under ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` (a world of one without
them); writes what the scenario measured to ``OUT`` (JSON, one file per rank)."""

from __future__ import annotations

import json
import os
import pickle
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal

import pyro_svi_ext as ext
from pyro_svi_ext.errors import CheckpointError
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


def coin_model(y):
    """A global non-reparameterized latent (its decaying average is averaged over the
    ranks) and, inside the data plate, a per-datum one (kept per rank)."""
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    with pyro.plate("data", N):  # sized N (y is the rank's block): indices are the block's
        k = pyro.sample("k", dist.Bernoulli(p))
        pyro.sample("obs", dist.Normal(2.0 * k - 1.0, 1.0), obs=y)


def coin_guide(y, local=True):
    avg = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}
    a = pyro.param("a", torch.tensor(2.0), constraint=dist.constraints.positive)
    b = pyro.param("b", torch.tensor(2.0), constraint=dist.constraints.positive)
    # a Beta without rsample: a score-function site, whose baseline is tested
    pyro.sample("p", _NonReparamBeta(a, b), infer=avg)
    if local:
        logits = pyro.param("logits", torch.zeros(N))  # per datum: indexed by the plate
        with pyro.plate("data", N) as idx:
            pyro.sample("k", dist.Bernoulli(logits=logits[idx]), infer=avg)


class _NonReparamBeta(dist.Beta):
    has_rsample = False  # sampled without a gradient path: a score-function site


def coin_data():
    g = torch.Generator().manual_seed(4)
    return torch.randn(N, generator=g) + 1.0


def scenario_tracegraph(cls):
    """TraceGraph_ELBO with decaying-average baselines: a global score-function site
    (exact draws: equal to one process), then with a per-datum one too."""
    y = coin_data()

    def global_guide(y):
        coin_guide(y, local=False)

    def global_model(y):
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        with pyro.plate("data", len(y)):
            pyro.sample("obs", dist.Normal(2.0 * p - 1.0, 1.0), obs=y)

    out = {}
    for name, est in (("tracegraph", ext.TraceGraph_ELBO()),
                      ("jit_tracegraph", ext.JitTraceGraph_ELBO())):
        out[name] = run_fit(est, global_model, global_guide, (y,), 20, cls, **_exact(cls))
        out[name]["averages"] = _averages()
    out["local"] = run_fit(ext.TraceGraph_ELBO(), coin_model, coin_guide, (y,), 20, cls)
    out["local"]["averages"] = _averages()
    return out


def _averages():
    return {k: list(v.shape) for k, v in pyro.get_param_store().items()
            if k.startswith("__baseline_avg")}


def _exact(cls):
    return {"exact_draws": True} if cls is DistributedSVI else {}


def scenario_independent(cls):
    """Independent draws on each rank: the conjugate posterior of a normal mean."""
    g = torch.Generator().manual_seed(3)
    y = 1.5 + torch.randn(N, generator=g)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = cls(conjugate, AutoNormal(conjugate), pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.995}),
              ext.Trace_ELBO())
    for _ in range(800):
        svi.step(y)
    out = {"params": {k: v.item() for k, v in pyro.get_param_store().items()}}
    prior_var, noise_var = 100.0, 1.0
    post_var = 1 / (1 / prior_var + N / noise_var)
    out["post_mean"], out["post_sd"] = post_var * y.sum().item() / noise_var, post_var**0.5
    pyro.set_rng_seed(5)  # a minibatch plate indexing the full data: ranks stay equal
    x, yb = data()
    out["indexed"] = run_fit(ext.Trace_ELBO(), blr_indexed, AutoNormal(blr_indexed), (x, yb),
                             10, cls)
    return out


def _failing(at_step: int, how: str):
    rank = int(os.environ.get("RANK", 0))
    calls = {"n": 0}

    def model(x, y):
        calls["n"] += 1
        if rank == 1 and calls["n"] == at_step:
            if how == "raise":
                raise ValueError("rank 1's model failed on purpose")
            if how == "die":
                os._exit(3)
            if how == "hang":
                time.sleep(20)
        blr(x, y)

    return model


def scenario_fault(cls, how):
    """Rank 1 fails at step 5; returns rank 0's error, how long it took, and whether the
    params kept their values from before the failed step."""
    x, y = data()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = _failing(5, how)
    svi = cls(model, AutoNormal(blr), pyro.optim.Adam({"lr": 0.05}), ext.Trace_ELBO(),
              timeout=5.0)
    for _ in range(4):
        svi.step(x, y)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    start = time.perf_counter()
    try:
        svi.step(x, y)
        return {"error": None}
    except Exception as err:
        after = dict(pyro.get_param_store().items())
        return {"error": f"{type(err).__name__}: {err}", "type": type(err).__name__,
                "fault_seconds": time.perf_counter() - start,
                "unchanged": all(torch.equal(before[k], after[k].detach()) for k in before)}


def scenario_mismatch(cls):
    """Rank 1 runs a model with a site of another shape: caught at step 1, before any
    gradient is exchanged."""
    from pyro_svi_ext.infer.collectives import Group

    sums = {"n": 0}
    original = Group.sum_

    def counted(self, tensors):
        sums["n"] += 1
        return original(self, tensors)

    Group.sum_ = counted
    rank = int(os.environ.get("RANK", 0))

    def model(x, y):
        pyro.sample("extra", dist.Normal(torch.zeros(1 + rank), 1.0).to_event(1))
        blr(x, y)

    x, y = data()
    svi = cls(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.05}), ext.Trace_ELBO())
    try:
        svi.step(x, y)
        return {"error": None, "sums": sums["n"]}
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}", "type": type(err).__name__,
                "sums": sums["n"]}


def scenario_uneven(cls):
    """63 rows over 2 processes."""
    x, y = data()
    svi = cls(blr, AutoNormal(blr), pyro.optim.Adam({"lr": 0.05}), ext.Trace_ELBO())
    svi.step(x[:63], y[:63])
    return {"error": None}


def scenario_checkpoint(cls, path):
    """10 steps straight, against 5 steps, save, a fresh store, optimizer and random
    state (another on each rank), load, 5; then a planted pickle at the path."""
    x, y = data()
    straight = run_fit(ext.Trace_ELBO(), blr, AutoNormal(blr), (x, y), 10, cls, exact_draws=True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(blr)
    svi = cls(blr, guide, pyro.optim.Adam({"lr": 0.05}), ext.Trace_ELBO(), exact_draws=True)
    for _ in range(5):
        svi.step(x, y)
    svi.save(path)
    pyro.clear_param_store()
    pyro.set_rng_seed(1000 + int(os.environ.get("RANK", 0)))  # the checkpoint's, next
    svi = cls(blr, guide, pyro.optim.Adam({"lr": 0.05}), ext.Trace_ELBO(), exact_draws=True)
    svi.load(path)
    steps = svi.step_count
    losses = [svi.step(x, y) for _ in range(5)]
    params = {k: v.detach().tolist() for k, v in pyro.get_param_store().items()}
    marker = path + ".ran"
    if int(os.environ.get("RANK", 0)) == 0:
        with open(path, "wb") as f:
            pickle.dump({"x": Planted(marker)}, f, protocol=2)
    try:
        svi.load(path)
        refused = None
    except CheckpointError as err:
        refused = str(err)
    return {"straight": straight, "resumed": {"losses": losses, "params": params},
            "steps": steps, "refused": refused, "ran": os.path.exists(marker)}


class Planted:
    """A pickle that would create a marker file when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def scenario_collectives(cls):
    """How many collectives each of 6 steps makes."""
    import torch.distributed as tdist

    counts: list[int] = []
    for name in ("all_reduce", "all_gather_object", "broadcast", "barrier"):
        original = getattr(tdist, name)

        def counted(*args, _original=original, **kwargs):
            counts[-1] += 1
            return _original(*args, **kwargs)

        setattr(tdist, name, counted)
    x, y = data()
    pyro.set_rng_seed(0)
    svi = cls(blr, AutoNormal(blr), pyro.optim.Adam({"lr": 0.05}), ext.Trace_ELBO())
    for _ in range(6):
        counts.append(0)
        svi.step(x, y)
    return {"counts": counts}


def scenario_late_param(cls, alike: bool):
    """From the third model call on, a new param scales the logits: on both ranks
    (``alike``: the step goes on with the new layout) or on rank 1 only (an error)."""
    rank = int(os.environ.get("RANK", 0))
    calls = {"n": 0}

    def model(x, y):
        calls["n"] += 1
        w = pyro.sample("w", dist.Normal(torch.zeros(D), 1.0).to_event(1))
        scale = 1.0
        if calls["n"] >= 3 and (alike or rank == 1):
            scale = pyro.param("late_scale", torch.tensor(1.0),
                               constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Bernoulli(logits=(x @ w) * scale), obs=y)

    x, y = data()
    pyro.set_rng_seed(0)
    svi = cls(model, AutoNormal(blr), pyro.optim.Adam({"lr": 0.05}), ext.Trace_ELBO())
    svi.step(x, y)
    before = {}
    try:
        for _ in range(4):
            before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
            svi.step(x, y)
    except Exception as err:
        after = dict(pyro.get_param_store().items())
        return {"error": f"{type(err).__name__}: {err}", "type": type(err).__name__,
                "unchanged": before.keys() == after.keys()
                and all(torch.equal(before[k], after[k].detach()) for k in before)}
    return {"error": None,
            "params": {k: v.detach().tolist() for k, v in pyro.get_param_store().items()}}


SCENARIOS = {
    "exact": scenario_exact,
    "independent": scenario_independent,
    "raise": lambda cls: scenario_fault(cls, "raise"),
    "die": lambda cls: scenario_fault(cls, "die"),
    "hang": lambda cls: scenario_fault(cls, "hang"),
    "mismatch": scenario_mismatch,
    "uneven": scenario_uneven,
    "collectives": scenario_collectives,
    "tracegraph": scenario_tracegraph,
    "late_alike": lambda cls: scenario_late_param(cls, alike=True),
    "late_one": lambda cls: scenario_late_param(cls, alike=False),
    "checkpoint": lambda cls: scenario_checkpoint(cls, sys.argv[2] + ".ckpt"),
}


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
