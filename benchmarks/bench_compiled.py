"""Compiled SVI steps vs Pyro's eager and JitTrace_ELBO steps (and NumPyro's jitted
step when ``numpyro``/``jax`` are installed: ``pip install -e '.[bench]'``), one thread.

    python benchmarks/bench_compiled.py [--steps 300] [--rounds 3]

Reports ms per step and the ratio to Pyro's Trace_ELBO step, in one run, plus the first
compiled step's latency (tracing + compiling) from a cold and from a warm inductor
cache. Writes ``benchmarks/results/compiled.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1")

import pyro
import pyro.infer
import pyro.optim
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models

import pyro_svi_ext

BENCHES = {  # label: (build, estimator, kwargs)
    "Trace_ELBO: blr N=1000 D=10": (models.blr, "Trace_ELBO", {}),
    "Trace_ELBO: amortized MLP guide, batch 128": (models.amortized_mlp, "Trace_ELBO", {}),
    "TraceEnum_ELBO: GMM K=3 N=500": (models.gmm_enum, "TraceEnum_ELBO",
                                      {"max_plate_nesting": 1}),
    "TraceEnum_ELBO: HMM K=4 T=100": (models.hmm_enum, "TraceEnum_ELBO",
                                      {"max_plate_nesting": 0}),
}


def torch_step_time(svi_cls, elbo, build, steps: int) -> float:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide, args = build()
    svi = svi_cls(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    for _ in range(5):
        svi.step(*args)
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(*args)
    return (time.perf_counter() - start) / steps


def numpyro_blr_step_time(steps: int) -> float | None:
    try:
        import jax
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as nd
        from numpyro.infer import SVI, Trace_ELBO
    except ImportError:
        return None
    x, y = (jnp.asarray(t.numpy()) for t in models.blr_data())

    def model(x, y):
        w = numpyro.sample("w", nd.Normal(jnp.zeros(x.shape[-1]), 1.0).to_event(1))
        b = numpyro.sample("b", nd.Normal(0.0, 10.0))
        sigma = numpyro.sample("sigma", nd.HalfNormal(1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", nd.Normal(x @ w + b, sigma), obs=y)

    def guide(x, y):
        d = x.shape[-1]
        pos = nd.constraints.positive
        w_loc = numpyro.param("w_loc", jnp.zeros(d))
        w_scale = numpyro.param("w_scale", jnp.ones(d), constraint=pos)
        b_loc = numpyro.param("b_loc", 0.0)
        b_scale = numpyro.param("b_scale", 1.0, constraint=pos)
        s_loc = numpyro.param("s_loc", 0.0)
        s_scale = numpyro.param("s_scale", 0.1, constraint=pos)
        numpyro.sample("w", nd.Normal(w_loc, w_scale).to_event(1))
        numpyro.sample("b", nd.Normal(b_loc, b_scale))
        numpyro.sample("sigma", nd.LogNormal(s_loc, s_scale))

    svi = SVI(model, guide, numpyro.optim.Adam(0.01), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), x, y)
    update = jax.jit(svi.update)
    for _ in range(5):
        state, loss = update(state, x, y)
    loss.block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        state, loss = update(state, x, y)
    loss.block_until_ready()
    return (time.perf_counter() - start) / steps


LATENCY = r"""
import sys, time, torch, pyro, pyro.optim
sys.path.insert(0, "benchmarks"); import models
import pyro_svi_ext
torch.set_num_threads(1)
model, guide, args = models.blr()
svi = pyro_svi_ext.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), pyro_svi_ext.JitTrace_ELBO())
svi.step(*args)
start = time.perf_counter(); svi.step(*args); print(time.perf_counter() - start)
"""


def first_step_latency() -> tuple[float, float]:
    """Seconds of the first compiled step (trace + compile): cold cache, then warm."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        root = Path(__file__).resolve().parents[1]
        runs = [float(subprocess.run([sys.executable, "-c", LATENCY], env=env, cwd=root,
                                     capture_output=True, text=True, check=True).stdout)
                for _ in range(2)]
    return runs[0], runs[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="run benchmarks whose label has this")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for label, (build, estimator, kwargs) in BENCHES.items():
        if opts.only not in label:
            continue
        impls = {
            "pyro eager": (pyro.infer.SVI, pyro.infer, estimator),
            "pyro Jit": (pyro.infer.SVI, pyro.infer, "Jit" + estimator),
            "ours eager": (pyro_svi_ext.SVI, pyro_svi_ext, estimator),
            "ours compiled": (pyro_svi_ext.SVI, pyro_svi_ext, "Jit" + estimator),
        }
        times = {k: [] for k in impls}
        for _ in range(opts.rounds):
            for name, (svi_cls, namespace, cls_name) in impls.items():
                try:
                    elbo = getattr(namespace, cls_name)(**kwargs)
                    times[name].append(torch_step_time(svi_cls, elbo, build, opts.steps))
                except Exception as err:  # e.g. Pyro's JIT cannot trace a model
                    print(f"{label}: {name} failed: {type(err).__name__}: {err}"[:200])
        row = {"model": label}
        for name, values in times.items():
            row[name] = 1e3 * statistics.median(values) if values else None
        if label.startswith("Trace_ELBO: blr"):
            numpyro_time = numpyro_blr_step_time(opts.steps)
            row["numpyro jit"] = None if numpyro_time is None else 1e3 * numpyro_time
        rows.append(row)
        print(row, flush=True)
    cold, warm = first_step_latency()
    columns = ["pyro eager", "pyro Jit", "ours eager", "ours compiled", "numpyro jit"]
    lines = ["| model | " + " | ".join(f"{c} ms (x vs pyro eager)" for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for r in rows:
        base = r["pyro eager"]
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append("-" if v is None else f"{v:.3f} ({base / v:.1f}x)")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"first compiled step (trace + inductor compile), BLR: cold cache {cold:.1f} s, "
                 f"warm cache {warm:.1f} s")
    table = "\n".join(lines)
    print(table)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compiled.json").write_text(json.dumps({"rows": rows, "first_step_cold_s": cold,
                                                   "first_step_warm_s": warm}, indent=2))
    (out / "compiled.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
