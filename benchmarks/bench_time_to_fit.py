"""Time to a fitted model: wall time from constructing SVI to N steps done (default
2,000), each run in a fresh process, cold and warm compile caches.

    python benchmarks/bench_time_to_fit.py [--steps 2000] [--only SUBSTR] [--threads 1|default]

Implementations: Pyro's eager estimator and its ``Jit*`` one; this package's eager
estimator, its compiled one as users get it (``auto``: compiled in the background while
eager steps run), and the same compiling in place (``blocking``,
``background_compile=False``); NumPyro's ``jax.jit(svi.update)`` when installed
(``pip install -e '.[bench]'``).

"Cold" runs with an empty inductor cache directory (``TORCHINDUCTOR_CACHE_DIR``);
"warm" runs again with the directory the cold run filled. Eager estimators have no cache
(one run serves both columns); neither do TorchScript (Pyro's Jit) and NumPyro's jit
without a persistent cache, which is off by default (their warm runs are separate
processes that compile again). Imports run before the clock starts, for every
implementation: jax and numpyro's, and torch's deferred ``torch._dynamo`` (which the
first ``torch.optim`` optimizer would otherwise import inside it). A second table gives
each run's whole process time, imports included (what ``python script.py`` takes). Writes
``benchmarks/results/time_to_fit.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = {  # label: (models.py builder, estimator, kwargs)
    "BLR N=1000 D=10": ("blr", "Trace_ELBO", {}),
    "amortized MLP guide, batch 128": ("amortized_mlp", "Trace_ELBO", {}),
    "VAE-like B=128 D=50 H=64 Z=8": ("amortized_mlp", "Trace_ELBO", {},
                                     {"batch": 128, "d": 50, "latent": 8, "hidden": 64}),
    "GMM K=3 N=500, enumerated": ("gmm_enum", "TraceEnum_ELBO", {"max_plate_nesting": 1}),
    "HMM K=4 T=100, enumerated": ("hmm_enum", "TraceEnum_ELBO", {"max_plate_nesting": 0}),
    "TraceGraph non-reparam, plate N=200": ("nonreparam_tracegraph", "TraceGraph_ELBO", {}),
    "RenyiELBO alpha=0.5, 8 particles": ("renyi_model", "RenyiELBO",
                                         {"alpha": 0.5, "num_particles": 8}),
    # only with --only (Pyro's eager step would take about 50 min for 2,000 steps)
    "HMM K=4 T=1000, enumerated": ("hmm_enum", "TraceEnum_ELBO", {"max_plate_nesting": 0},
                                   {"t": 1000}),
}
ON_REQUEST = {"HMM K=4 T=1000, enumerated"}  # run only when --only names them
IMPLS = ["pyro eager", "pyro Jit", "ours eager", "ours auto", "ours blocking", "numpyro"]
CACHED = {"ours auto", "ours blocking"}  # use inductor's on-disk cache
ONE_RUN = {"pyro eager", "ours eager"}  # no compile: the cold run is the warm run

WORKER = r"""
import json, sys, time
t_process = time.perf_counter()
label, impl, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, {here!r})
import torch
if threads == "1":
    torch.set_num_threads(1)
import bench_time_to_fit as b
builder, estimator, kwargs, *build = b.MODELS[label]
build_kwargs = build[0] if build else {{}}
out = {{}}
if impl == "numpyro":
    import jax, numpyro, numpyro_models
    from numpyro.infer import SVI
    import numpyro.infer, numpyro.optim
    model, guide, args = getattr(numpyro_models, builder)(**build_kwargs)
    kw = {{k: v for k, v in kwargs.items() if k not in ("max_plate_nesting",)}}
    start = time.perf_counter()
    svi = SVI(model, guide, numpyro.optim.Adam(0.01), getattr(numpyro.infer, estimator)(**kw))
    state = svi.init(jax.random.PRNGKey(0), *args)
    update = jax.jit(svi.update)
    for _ in range(steps):
        state, loss = update(state, *args)
    loss.block_until_ready()
    out["seconds"] = time.perf_counter() - start
else:
    import pyro, pyro.infer, pyro.optim, models
    import pyro_svi_ext
    # torch imports torch._dynamo at the first torch.optim optimizer (about 2 s here,
    # every torch implementation pays it): an import, outside the clock like NumPyro's
    # import of jax; the whole-process table counts both
    import torch._dynamo
    ns = pyro.infer if impl.startswith("pyro") else pyro_svi_ext
    prefix = "" if impl.endswith("eager") else "Jit"
    extra = {{"background_compile": False}} if impl == "ours blocking" else {{}}
    pyro.set_rng_seed(0)
    model, guide, args = getattr(models, builder)(**build_kwargs)
    start = time.perf_counter()
    elbo = getattr(ns, prefix + estimator)(**kwargs, **extra)
    svi = ns.SVI(model, guide, pyro.optim.Adam({{"lr": 0.01}}), elbo)
    for _ in range(steps):
        loss = svi.step(*args)
    out["seconds"] = time.perf_counter() - start
    steps_obj = getattr(elbo, "_steps", {{}})
    for step in steps_obj.values():
        out["swaps"] = step.swaps
        out["compiled_graphs"] = len(step.graphs)
        out["fallback"] = step.dynamic_reason
out["loss"] = float(loss)
out["process_seconds"] = time.perf_counter() - t_process
print("RESULT " + json.dumps(out))
"""


def run(label: str, impl: str, steps: int, threads: str, cache: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, JAX_PLATFORMS="cpu",
               PYTHONWARNINGS="ignore")
    if threads == "1":
        env.update(OMP_NUM_THREADS="1", XLA_FLAGS="--xla_cpu_multi_thread_eigen=false "
                   "intra_op_parallelism_threads=1")
    proc = subprocess.run([sys.executable, "-c", WORKER.format(here=str(HERE)), label, impl,
                           str(steps), threads], env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:200]}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--only", help="models whose label contains this")
    parser.add_argument("--impls", nargs="+", default=IMPLS)
    parser.add_argument("--threads", default="1", choices=["1", "default"])
    opts = parser.parse_args()
    results: dict = {}
    for label in MODELS:
        if (opts.only and opts.only not in label) or (not opts.only and label in ON_REQUEST):
            continue
        results[label] = {}
        for impl in opts.impls:
            with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache:
                cold = run(label, impl, opts.steps, opts.threads, cache)
                warm = cold if impl in ONE_RUN else run(label, impl, opts.steps,
                                                        opts.threads, cache)
            results[label][impl] = {"cold": cold, "warm": warm}
            print(f"{label} | {impl} | cold {_fmt(cold)} | warm {_fmt(warm)}", flush=True)
    table = markdown(results, opts)
    print(table)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    suffix = "" if opts.threads == "1" else "_default_threads"
    (out / f"time_to_fit{suffix}.md").write_text(table + "\n")
    (out / f"time_to_fit{suffix}.json").write_text(json.dumps(
        {"steps": opts.steps, "threads": opts.threads, "python": platform.python_version(),
         "results": results, "date": time.strftime("%Y-%m-%d")}, indent=1))


def _fmt(r: dict) -> str:
    return r["error"] if "error" in r else f"{r['seconds']:.1f} s"


def markdown(results: dict, opts) -> str:
    lines = [f"Seconds from constructing SVI to {opts.steps} steps done, one fresh process "
             f"per run, threads: {opts.threads}. cold / warm inductor cache.", "",
             "| model | " + " | ".join(opts.impls) + " | ours auto vs best other (cold) |",
             "|---|" + "---|" * (len(opts.impls) + 1)]
    for label, row in results.items():
        cells = []
        for impl in opts.impls:
            r = row[impl]
            cells.append("-" if "error" in r["cold"] else
                         f"{r['cold']['seconds']:.1f} / {r['warm']['seconds']:.1f}")
        others = [row[i]["cold"]["seconds"] for i in opts.impls
                  if not i.startswith("ours") and "error" not in row[i]["cold"]]
        ours = row.get("ours auto", {}).get("cold", {})
        ratio = (f"{min(others) / ours['seconds']:.2f}x" if others and "seconds" in ours
                 else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    # what `python script.py` takes: imports included
    lines += ["", "Whole process, imports included (cold cache), seconds:", "",
              "| model | " + " | ".join(opts.impls) + " |",
              "|---|" + "---|" * len(opts.impls)]
    for label, row in results.items():
        cells = [f"{row[i]['cold']['process_seconds']:.1f}"
                 if "process_seconds" in row[i]["cold"] else "-" for i in opts.impls]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
