"""Data-parallel SVI: steps per second on 1 and 2 processes (one thread each), gloo on
localhost, Bayesian logistic regression (N=200,000, D=50, AutoNormal, Adam).

    python benchmarks/bench_distributed.py [--n 200000] [--d 50] [--steps 60] [--quick]

Launches itself once per world size (``RANK``/``WORLD_SIZE`` set, like ``torchrun``).
Each rank times ``--steps`` steps after ``--warmup`` and splits a step into: loss and
gradients (the model on the rank's shard), the step's one all-reduce (flags, loss,
gradients; it also waits for the slower rank), and the rest (update, bookkeeping).
Reports steps/s, the speedup and the parallel efficiency (speedup / processes), for the
eager ``Trace_ELBO`` and the compiled ``JitTrace_ELBO``; then an estimate for 8 and 64
ranks from the measured shard compute time and collective latency (see ``estimate``).
Writes ``benchmarks/results/distributed.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_svi_ext as ext
from pyro_svi_ext.infer import collectives
from pyro_svi_ext.infer.distributed import DistributedSVI

RESULTS = Path(__file__).with_name("results")
ESTIMATORS = {"Trace_ELBO (eager)": ext.Trace_ELBO, "JitTrace_ELBO (compiled)": ext.JitTrace_ELBO}


def blr(x, y):
    d = x.shape[1]
    w = pyro.sample("w", dist.Normal(torch.zeros(d), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Bernoulli(logits=x @ w + b), obs=y)


def _data(n: int, d: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    y = (torch.rand(n, generator=g) < torch.sigmoid(x @ w)).float()
    return x, y


class _Timer:
    """Wall time spent in a few named calls (patched in, for this process only)."""

    def __init__(self):
        self.spent: dict[str, float] = {}

    def wrap(self, owner, attr: str, name: str):
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start

        setattr(owner, attr, timed)


def rank_main(args) -> dict:
    """One rank: time each estimator; returns ms per step and its parts."""
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    x, y = _data(args.n, args.d)
    timer = _Timer()
    timer.wrap(DistributedSVI, "_run_loss_and_grads", "loss and gradients")
    timer.wrap(collectives.Group, "sum_flat", "all-reduce")
    out = {}
    for label, estimator in ESTIMATORS.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = DistributedSVI(blr, AutoNormal(blr), pyro.optim.Adam({"lr": 0.01}), estimator())
        for _ in range(args.warmup):
            svi.step(x, y)
        svi.wait_for_compiles(300)
        svi.step(x, y)
        timer.spent.clear()
        start = time.perf_counter()
        for _ in range(args.steps):
            svi.step(x, y)
        total = (time.perf_counter() - start) / args.steps
        parts = {k: v / args.steps * 1e3 for k, v in timer.spent.items()}
        parts["rest"] = total * 1e3 - sum(parts.values())
        out[label] = {"ms_per_step": total * 1e3, "parts_ms": parts}
    out["latency_us"] = _collective_latency(svi) if svi.world > 1 else {}
    return out


def _collective_latency(svi: DistributedSVI, repeats: int = 200) -> dict:
    """µs per collective of the sizes a step sends, with no compute in between."""
    out = {}
    params = [p for _, p in pyro.get_param_store().named_parameters()]
    payload = [torch.zeros(4)] + [torch.zeros_like(p) for p in params]
    for name, call in (("all-reduce", lambda: svi.comm.sum_flat(payload)),):
        call()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        out[name] = (time.perf_counter() - start) / repeats * 1e6
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, argv: list[str]) -> list[dict]:
    port = str(_free_port())
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"rank{r}.json" for r in range(world)]
        procs = []
        for r in range(world):
            env = dict(os.environ, OMP_NUM_THREADS="1", RANK=str(r), LOCAL_RANK=str(r),
                       WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            procs.append(subprocess.Popen([sys.executable, __file__, *argv, "--out",
                                           str(outs[r])], env=env))
        for p in procs:
            if p.wait(timeout=1800):
                raise SystemExit(f"a rank exited with {p.returncode}")
        return [json.loads(o.read_text()) for o in outs]


def estimate(one: dict, two: dict, latency: dict) -> dict:
    """Steps/s at W ranks, from: the 1-process loss-and-gradient time split W ways (the
    model is linear in the rows), the per-step rest as measured on 2 ranks, and the
    step's one collective, whose latency grows like log2(W) (gloo's halving-doubling
    all-reduce for small messages; the payload here is 106 floats) from the 2-rank
    measurement."""
    out = {}
    compute1 = one["parts_ms"]["loss and gradients"]
    rest = two["parts_ms"]["rest"]
    comm2 = latency["all-reduce"] / 1e3
    for world in (8, 64):
        step = compute1 / world + rest + comm2 * (world.bit_length() - 1)
        out[world] = {"ms_per_step": step, "speedup": one["ms_per_step"] / step,
                      "efficiency": one["ms_per_step"] / step / world}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=50)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="N=20,000, 20 steps")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.quick:
        args.n, args.steps, args.warmup = 20_000, 20, 5
    if "RANK" in os.environ:
        result = rank_main(args)
        if args.out:
            Path(args.out).write_text(json.dumps(result))
        return
    argv = ["--n", str(args.n), "--d", str(args.d), "--steps", str(args.steps),
            "--warmup", str(args.warmup)]
    one = launch(1, argv)[0]
    two = launch(2, argv)
    report(args, one, two)


def report(args, one: dict, two: list[dict]) -> None:
    latency = two[0]["latency_us"]
    lines = [f"# Data-parallel SVI: BLR N={args.n:,}, D={args.d}, one thread per process",
             "", "| estimator | 1 proc steps/s | 2 procs steps/s | speedup | efficiency |"
             " 2-proc step parts (ms) |", "|---|---|---|---|---|---|"]
    data = {"args": vars(args), "one": one, "two": two, "estimates": {}}
    for label in ESTIMATORS:
        s1 = 1e3 / one[label]["ms_per_step"]
        slowest = max(r[label]["ms_per_step"] for r in two)
        s2 = 1e3 / slowest
        parts = ", ".join(f"{k} {v:.2f}" for k, v in two[0][label]["parts_ms"].items())
        lines.append(f"| {label} | {s1:.1f} | {s2:.1f} | {s2 / s1:.2f} | "
                     f"{s2 / s1 / 2:.0%} | {parts} |")
        data["estimates"][label] = estimate(one[label], two[0][label], latency)
    lines += ["", f"Collective latency on 2 ranks (µs, no compute between): "
              f"one step's all-reduce {latency['all-reduce']:.0f}.", "",
              "| estimator | 8 ranks: speedup (efficiency) | 64 ranks: speedup (efficiency) |",
              "|---|---|---|"]
    for label, est in data["estimates"].items():
        lines.append(f"| {label} | {est[8]['speedup']:.1f} ({est[8]['efficiency']:.0%}) | "
                     f"{est[64]['speedup']:.1f} ({est[64]['efficiency']:.0%}) |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distributed.md").write_text(text)
    (RESULTS / "distributed.json").write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
