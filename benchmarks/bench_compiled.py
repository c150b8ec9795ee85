"""Compiled SVI steps vs Pyro's eager and Jit steps and NumPyro's jitted step, one thread.

    python benchmarks/bench_compiled.py [--steps 300] [--rounds 3] [--only SUBSTR] [--quick]

For each model times, per SVI step (Adam, lr 0.01), interleaved within each round:
Pyro's eager estimator (``pyro.infer.SVI`` + ``pyro.infer.<Estimator>``), Pyro's
``Jit<Estimator>``, this package's eager ``<Estimator>`` and compiled ``Jit<Estimator>``
(both under ``pyro_svi_ext.SVI``), and NumPyro's ``jax.jit(svi.update)`` when ``numpyro``
and ``jax`` are installed (``pip install -e '.[bench]'``; the NumPyro twins of the models
are in ``numpyro_models.py``). Reports the median ms per step over rounds, the ratio to
Pyro's eager step, and "compiled vs numpyro" (NumPyro ms / ours compiled ms: > 1 means
ours is faster), plus the first compiled step's latency (tracing + compiling) from a cold
and from a warm inductor cache. Writes ``benchmarks/results/compiled.{md,json}``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# One thread for XLA. On recent jaxlib these flags no longer size XLA's CPU thread pool;
# the pool follows the CPU affinity at client creation, see ``_start_jax_one_thread``.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pyro
import pyro.infer
import pyro.optim
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models

import pyro_svi_ext

WARMUP = 5


@dataclass
class Bench:
    build: object  # () -> (model, guide, args), Pyro version (models.py)
    numpyro: str  # name of the twin in numpyro_models.py
    estimator: str  # class name in pyro.infer, pyro_svi_ext and numpyro.infer
    kwargs: dict = field(default_factory=dict)  # the estimator's arguments (all three)
    build_kwargs: dict = field(default_factory=dict)  # for both builds
    steps_scale: float = 1.0  # fraction of --steps for slow models
    group: str = "models"


def _blr_size(n: int) -> Bench:
    return Bench(models.blr, "blr", "Trace_ELBO", build_kwargs={"n": n, "d": 10},
                 group="size series")


BENCHES = {
    "Trace_ELBO: blr N=1000 D=10": Bench(models.blr, "blr", "Trace_ELBO"),
    "Trace_ELBO: amortized MLP guide, batch 128": Bench(models.amortized_mlp,
                                                        "amortized_mlp", "Trace_ELBO"),
    "Trace_ELBO: VAE-like B=128 D=50 H=64 Z=8": Bench(
        models.amortized_mlp, "amortized_mlp", "Trace_ELBO",
        build_kwargs={"batch": 128, "d": 50, "latent": 8, "hidden": 64}),
    "TraceEnum_ELBO: GMM K=3 N=500": Bench(models.gmm_enum, "gmm_enum", "TraceEnum_ELBO",
                                           {"max_plate_nesting": 1}),
    "TraceEnum_ELBO: HMM K=4 T=100": Bench(models.hmm_enum, "hmm_enum", "TraceEnum_ELBO",
                                           {"max_plate_nesting": 0}, steps_scale=0.25),
    "TraceGraph_ELBO: non-reparam Bernoulli latents, plate N=200": Bench(
        models.nonreparam_tracegraph, "nonreparam_tracegraph", "TraceGraph_ELBO"),
    "RenyiELBO alpha=0.5, 8 particles: hierarchical Normal N=100": Bench(
        models.renyi_model, "renyi_model", "RenyiELBO", {"alpha": 0.5, "num_particles": 8},
        steps_scale=0.5),
    # NumPyro draws its particles vectorized; Pyro and this package do so on request
    "RenyiELBO alpha=0.5, 8 vectorized particles: hierarchical Normal N=100": Bench(
        models.renyi_model, "renyi_model", "RenyiELBO",
        {"alpha": 0.5, "num_particles": 8, "vectorize_particles": True,
         "max_plate_nesting": 1}, steps_scale=0.5),
    "Trace_ELBO: blr N=100 D=10": _blr_size(100),
    "Trace_ELBO: blr N=10000 D=10": _blr_size(10_000),
    "Trace_ELBO: blr N=100000 D=10": _blr_size(100_000),
}
# the size series' N=1000 row is the first model's measurement
SIZE_SERIES = ["Trace_ELBO: blr N=100 D=10", "Trace_ELBO: blr N=1000 D=10",
               "Trace_ELBO: blr N=10000 D=10", "Trace_ELBO: blr N=100000 D=10"]

TORCH_IMPLS = {  # name: (SVI class, namespace, Jit prefix)
    "pyro eager": (pyro.infer.SVI, pyro.infer, ""),
    "pyro Jit": (pyro.infer.SVI, pyro.infer, "Jit"),
    "ours eager": (pyro_svi_ext.SVI, pyro_svi_ext, ""),
    "ours compiled": (pyro_svi_ext.SVI, pyro_svi_ext, "Jit"),
}
COLUMNS = [*TORCH_IMPLS, "numpyro jit"]
FALLBACK = "running eagerly"  # this package's warning when a model cannot be compiled


class UnavailableError(Exception):
    """This implementation has no such estimator (shown as "-")."""


def torch_step_time(impl: str, bench: Bench, steps: int) -> tuple[float, list[str]]:
    """Seconds per step after ``WARMUP`` steps and, for this package's compiled step,
    after its background compile is swapped in; and the messages of the warnings this
    package's estimators gave."""
    svi_cls, namespace, prefix = TORCH_IMPLS[impl]
    elbo_cls = getattr(namespace, prefix + bench.estimator, None)
    if elbo_cls is None:
        raise UnavailableError(f"no {namespace.__name__}.{prefix}{bench.estimator}")
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide, args = bench.build(**bench.build_kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        svi = svi_cls(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo_cls(**bench.kwargs))
        for _ in range(WARMUP):
            svi.step(*args)
        # the compiled graph, not the interim one: wait for the background compile,
        # then one step swaps it in (bench_time_to_fit.py measures the wait itself)
        if hasattr(svi, "wait_for_compiles") and svi.wait_for_compiles(1800):
            svi.step(*args)
        start = time.perf_counter()
        for _ in range(steps):
            svi.step(*args)
        elapsed = time.perf_counter() - start
    messages = sorted({str(w.message) for w in caught if FALLBACK in str(w.message)})
    return elapsed / steps, messages


def _start_jax_one_thread():
    """Import jax and numpyro with XLA's CPU thread pool sized to one thread.

    XLA sizes that pool from the CPU affinity when the CPU client starts (``XLA_FLAGS``
    does not limit it on recent jaxlib), so narrow the affinity to one CPU while the
    client starts, then give every thread of the process its full affinity back.
    Returns (jax, numpyro) or raises ImportError."""
    affinity = getattr(os, "sched_getaffinity", None)
    allowed = affinity(0) if affinity else None
    if allowed:
        os.sched_setaffinity(0, {min(allowed)})
    try:
        import jax
        import numpyro

        jax.devices()
    finally:
        if allowed:
            for task in os.listdir("/proc/self/task"):
                try:
                    os.sched_setaffinity(int(task), allowed)
                except OSError:
                    pass
    return jax, numpyro


class NumPyroRunner:
    """NumPyro's jitted ``svi.update`` per model, compiled once and reused across rounds."""

    def __init__(self):
        try:
            self.jax, self.numpyro = _start_jax_one_thread()
            self.infer = importlib.import_module("numpyro.infer")
            self.optim = importlib.import_module("numpyro.optim")
            self.models = importlib.import_module("numpyro_models")
        except ImportError as err:
            self.missing = f"{type(err).__name__}: {err} (pip install -e '.[bench]')"
            return
        self.missing = None
        self.cache: dict[str, tuple] = {}

    def step_time(self, label: str, bench: Bench, steps: int) -> float:
        if self.missing:
            raise UnavailableError(self.missing)
        if label not in self.cache:
            build = getattr(self.models, bench.numpyro)
            model, guide, args = build(**bench.build_kwargs)
            # NumPyro always draws particles vectorized and has no such arguments
            kwargs = {k: v for k, v in bench.kwargs.items()
                      if k not in ("vectorize_particles", "max_plate_nesting")}
            elbo = getattr(self.infer, bench.estimator)(**kwargs)
            svi = self.infer.SVI(model, guide, self.optim.Adam(0.01), elbo)
            self.cache[label] = (svi, self.jax.jit(svi.update), args)
        svi, update, args = self.cache[label]
        state = svi.init(self.jax.random.PRNGKey(0), *args)
        for _ in range(WARMUP):
            state, loss = update(state, *args)
        loss.block_until_ready()
        start = time.perf_counter()
        for _ in range(steps):
            state, loss = update(state, *args)
        loss.block_until_ready()
        return (time.perf_counter() - start) / steps


LATENCY = r"""
import sys, time, torch, pyro, pyro.optim
sys.path.insert(0, "benchmarks"); import models
import pyro_svi_ext
torch.set_num_threads(1)
model, guide, args = models.blr()
svi = pyro_svi_ext.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), pyro_svi_ext.JitTrace_ELBO())
svi.step(*args)  # the first step runs eagerly; the second one traces and compiles
start = time.perf_counter(); svi.step(*args); print(time.perf_counter() - start)
"""


def first_step_latency() -> tuple[float, float]:
    """Seconds of the first compiled step (trace + compile): cold cache, then warm."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        root = Path(__file__).resolve().parents[1]
        runs = [float(subprocess.run([sys.executable, "-c", LATENCY], env=env, cwd=root,
                                     capture_output=True, text=True, check=True)
                      .stdout.split()[-1])
                for _ in range(2)]
    return runs[0], runs[1]


def run_bench(label: str, bench: Bench, opts, numpyro_runner: NumPyroRunner) -> dict:
    steps = max(1, round(opts.steps * bench.steps_scale))
    times: dict[str, list[float]] = {c: [] for c in COLUMNS}
    errors: dict[str, str] = {}
    fallback: set[str] = set()
    for _ in range(opts.rounds):
        for name in COLUMNS:
            if name in errors:  # failed or unavailable in an earlier round
                continue
            try:
                if name == "numpyro jit":
                    seconds = numpyro_runner.step_time(label, bench, steps)
                else:
                    seconds, messages = torch_step_time(name, bench, steps)
                    if messages and name == "ours compiled":
                        fallback.update(messages)
                times[name].append(seconds)
            except UnavailableError as err:
                errors[name] = f"unavailable: {err}"
            except Exception as err:  # e.g. Pyro's JIT cannot trace a model
                errors[name] = f"{type(err).__name__}: {err}"
                print(f"{label}: {name} failed: {errors[name]}"[:400], flush=True)
    row: dict = {"model": label, "group": bench.group, "estimator": bench.estimator,
                 "steps": steps}
    for name, values in times.items():
        row[name] = 1e3 * statistics.median(values) if values else None
    compiled, jax_ms = row["ours compiled"], row["numpyro jit"]
    row["compiled vs numpyro"] = jax_ms / compiled if compiled and jax_ms else None
    row["rounds_ms"] = {name: [1e3 * v for v in values] for name, values in times.items()}
    row["errors"] = errors
    row["ours compiled fell back to eager"] = sorted(fallback)
    for message in sorted(fallback):
        print(f"{label}: ours compiled fell back to eager: {message}"[:400], flush=True)
    return row


def table(rows: list[dict]) -> list[str]:
    header = ["model", *[f"{c} ms (x vs pyro eager)" for c in COLUMNS], "compiled vs numpyro"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---|" * (len(header) - 1)]
    for r in rows:
        base = r["pyro eager"]
        cells = []
        for c in COLUMNS:
            v = r.get(c)
            if v is None:
                cells.append("-")
                continue
            mark = " †" if c == "ours compiled" and r["ours compiled fell back to eager"] else ""
            cells.append(f"{v:.3f} ({base / v:.1f}x){mark}" if base else f"{v:.3f}{mark}")
        ratio = r["compiled vs numpyro"]
        cells.append("-" if ratio is None else f"{ratio:.2f}")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300,
                        help="timed steps per implementation and round (slow models "
                             "run a fixed fraction of them)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="run benchmarks whose label has this")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 10 steps, 1 round (overrides --steps/--rounds)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.steps, opts.rounds = 10, 1
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already started
        pass
    numpyro_runner = NumPyroRunner()
    if numpyro_runner.missing:
        print(f"numpyro jit column skipped: {numpyro_runner.missing}", flush=True)
    started = time.perf_counter()
    rows = []
    for label, bench in BENCHES.items():
        if opts.only not in label:
            continue
        bench_start = time.perf_counter()
        row = run_bench(label, bench, opts, numpyro_runner)
        rows.append(row)
        summary = {k: (round(v, 3) if isinstance(v, float) else v)
                   for k, v in row.items() if k in COLUMNS or k == "compiled vs numpyro"}
        print(f"{label} ({row['steps']} steps x {opts.rounds} rounds, "
              f"{time.perf_counter() - bench_start:.0f} s): {summary}", flush=True)
    try:
        cold, warm = first_step_latency()
    except (subprocess.CalledProcessError, ValueError, IndexError) as err:
        print(f"first-step latency failed: {err}", flush=True)
        cold = warm = None

    by_label = {r["model"]: r for r in rows}
    model_rows = [r for r in rows if r["group"] == "models"]
    size_rows = [by_label[label] for label in SIZE_SERIES if label in by_label]
    lines = [f"SVI step, ms (median of {opts.rounds} rounds; Adam lr 0.01; one thread; "
             f"torch {torch.__version__}, pyro {pyro.__version__}"
             + ("" if numpyro_runner.missing else
                f", numpyro {numpyro_runner.numpyro.__version__}, "
                f"jax {numpyro_runner.jax.__version__}") + ")", ""]
    if model_rows:
        lines += [*table(model_rows), ""]
    if size_rows:
        lines += ["Size series, Bayesian linear regression (D=10, Trace_ELBO):", ""]
        lines += [*table(size_rows), ""]
    lines.append("compiled vs numpyro: NumPyro ms / ours compiled ms (> 1: ours is faster). "
                 "†: ours compiled fell back to eager (the model cannot be compiled). "
                 "-: no such estimator, failed, or not installed.")
    for r in rows:
        for name, err in r["errors"].items():
            lines.append(f"- {r['model']}, {name}: {err}"[:300])
        for message in r["ours compiled fell back to eager"]:
            lines.append(f"- {r['model']}, ours compiled fell back to eager: {message}"[:300])
    lines.append("")
    if cold is not None:
        lines.append(f"first compiled step (trace + inductor compile), BLR: cold cache "
                     f"{cold:.1f} s, warm cache {warm:.1f} s")
    else:
        lines.append("first compiled step latency: failed")
    text = "\n".join(lines)
    print(text)
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"steps": opts.steps, "rounds": opts.rounds, "quick": opts.quick,
            "torch": torch.__version__, "pyro": pyro.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "numpyro": None if numpyro_runner.missing else numpyro_runner.numpyro.__version__,
            "jax": None if numpyro_runner.missing else numpyro_runner.jax.__version__}
    (out / "compiled.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "first_step_cold_s": cold, "first_step_warm_s": warm},
        indent=2))
    (out / "compiled.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
