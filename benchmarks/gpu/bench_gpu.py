"""SVI on a GPU: time per step and time to 2,000 steps, in one run per implementation.

    python benchmarks/gpu/bench_gpu.py torch   --out DIR [--cpu] [--budget-s 170]
    python benchmarks/gpu/bench_gpu.py numpyro --out DIR [--cpu] [--budget-s 60]
    python benchmarks/gpu/bench_gpu.py report  --out DIR

``torch`` runs, on CUDA, Pyro's eager and Jit steps, this package's eager step, its
compiled step as users get it (``Jit*``: inductor compiling in the background, looped
with ``step_tensor``) and the same replayed as a CUDA graph (``backend="cudagraphs"``,
compiled in place); ``numpyro`` runs NumPyro's ``jax.jit(svi.update)`` on the GPU (its own
process: JAX and torch each keep a memory pool; run it with
``XLA_PYTHON_CLIENT_PREALLOCATE=false``); ``report`` merges both into ``bench_gpu.md``
and ``bench_gpu.json``. Each writes its JSON after every cell, so a run cut short by a
timeout keeps what it measured.

Models (``bench_compiled.py``'s, at GPU sizes): Bayesian linear regression N=10^6 D=10,
the VAE-like MLP guide at batch 1,024 (D=50 H=64 Z=8), the enumerated HMM K=4 T=100 over
a batch of 64 sequences. Each cell is one run: the clock starts before ``SVI`` is built
and stops when step 2,000 is done on the device (the compile included); a run still
short of 2,000 steps after ``--cell-s`` seconds stops and is extrapolated from its last
steps (marked ``~``). Then, after any background compile has finished (``wait_for_compiles``,
at most ``--wait-s``) and 3 more steps, µs per step over ``--timed`` steps. ``--cpu``: tiny
sizes and few steps on the CPU (the dry run of ``check.sh --cpu``), compiled columns with
``--backend`` (default ``eager`` there) and no CUDA-graph column.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS))

COLUMNS = ["pyro eager", "pyro Jit", "ours eager", "ours compiled",
           "ours compiled + CUDA graph", "numpyro jit"]
#: ``(bench_compiled.TORCH_IMPLS key, estimator options, loop)``: "tensor" loops
#: ``svi.step_tensor`` (nothing read on the host), "step" ``svi.step``
TORCH_COLUMNS = {
    "pyro eager": ("pyro eager", {}, "step"),
    "pyro Jit": ("pyro Jit", {}, "step"),
    "ours eager": ("ours eager", {}, "step"),
    "ours compiled": ("ours compiled", {}, "tensor"),
    "ours compiled + CUDA graph": ("ours compiled", {"backend": "cudagraphs"}, "tensor"),
}
#: steps between two synchronized clock reads
CHECK_EVERY = 25


#: (label, models.py builder and its NumPyro twin, estimator, its arguments, GPU sizes,
#: the dry run's sizes)
MODELS = [
    ("Trace_ELBO: blr N={n} D={d}", "blr", "Trace_ELBO", {},
     {"n": 10**6, "d": 10}, {"n": 1000, "d": 10}),
    ("Trace_ELBO: VAE-like B={batch} D={d} H={hidden} Z={latent}", "amortized_mlp",
     "Trace_ELBO", {}, {"batch": 1024, "d": 50, "latent": 8, "hidden": 64},
     {"batch": 32, "d": 10, "latent": 2, "hidden": 16}),
    ("TraceEnum_ELBO: HMM K={k} T={t}, {batch} sequences", "hmm_enum", "TraceEnum_ELBO",
     {"max_plate_nesting": 1}, {"k": 4, "t": 100, "batch": 64}, {"k": 2, "t": 5, "batch": 3}),
]


def benches(cpu: bool) -> dict:
    """``{label: bench_compiled.Bench}`` at GPU sizes, or the dry run's."""
    import models
    from bench_compiled import Bench

    out = {}
    for label, builder, estimator, kwargs, gpu, small in MODELS:
        size = small if cpu else gpu
        out[label.format(**size)] = Bench(getattr(models, builder), builder, estimator,
                                          kwargs, build_kwargs=size)
    return out


class Clock:
    """Seconds since start, read after the device has finished its queued work."""

    def __init__(self, sync):
        self.sync = sync
        self.sync()
        self.start = time.perf_counter()

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter() - self.start


def time_to_n(step, n: int, cell_s: float, clock: Clock) -> dict:
    """Run ``step()`` up to ``n`` times; stop after ``cell_s`` seconds and extrapolate
    from the last ``CHECK_EVERY`` steps."""
    done, marks = 0, [(0, clock())]
    while done < n:
        step()
        done += 1
        if done % CHECK_EVERY == 0 or done == n:
            marks.append((done, clock()))
            if marks[-1][1] > cell_s and done < n:
                break
    seconds = marks[-1][1]
    (d0, t0), (d1, t1) = marks[-2], marks[-1]
    last_step = (t1 - t0) / max(1, d1 - d0)
    if done < n:
        return {"seconds": seconds + (n - done) * last_step, "estimated": True,
                "steps_run": done, "last_step_s": last_step}
    return {"seconds": seconds, "estimated": False, "steps_run": done,
            "last_step_s": last_step}


def per_step(step, timed: int, last_step_s: float, sync, budget_s: float = 3.0) -> float:
    """Seconds per step over ``timed`` steps (fewer when they would take over
    ``budget_s``)."""
    count = max(3, min(timed, int(budget_s / max(last_step_s, 1e-6))))
    clock = Clock(sync)
    for _ in range(count):
        step()
    return clock() / count


# --- torch implementations ----------------------------------------------------------------
def build_on(bench, device):
    """``bench.build()`` on the CPU (its data come from CPU generators), then its tensor
    arguments and the ``nn.Module`` s its model and guide close over moved to ``device``;
    tensors the model and guide create go there by the default-device context."""
    import torch

    model, guide, args = bench.build(**bench.build_kwargs)
    for fn in (model, guide):
        for cell in getattr(fn, "__closure__", None) or ():
            if isinstance(cell.cell_contents, torch.nn.Module):
                cell.cell_contents.to(device)
    return model, guide, tuple(a.to(device) if torch.is_tensor(a) else a for a in args)


def cuda_graph_captures(svi) -> int:
    """How many CUDA graphs the compiled steps of ``svi`` captured."""
    total = 0
    for step in getattr(svi.loss_fn, "_steps", {}).values():
        for graph in getattr(getattr(step, "graphs", None), "graphs", {}).values():
            total += getattr(graph.run, "captures", 0)
    return total


def torch_cell(column: str, bench, opts, device) -> dict:
    import pyro
    import pyro.optim
    import torch
    from bench_compiled import FALLBACK, TORCH_IMPLS, UnavailableError

    key, options, loop = TORCH_COLUMNS[column]
    svi_cls, namespace, prefix = TORCH_IMPLS[key]
    elbo_cls = getattr(namespace, prefix + bench.estimator, None)
    if elbo_cls is None:
        raise UnavailableError(f"no {namespace.__name__}.{prefix}{bench.estimator}")
    if key == "ours compiled" and opts.backend and "backend" not in options:
        options = {**options, "backend": opts.backend}
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide, args = build_on(bench, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.device(device), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clock = Clock(sync)
        svi = svi_cls(model, guide, pyro.optim.Adam({"lr": 0.01}),
                      elbo_cls(**bench.kwargs, **options))
        take = svi.step_tensor if loop == "tensor" else svi.step
        cell = time_to_n(lambda: take(*args), opts.steps, opts.cell_s, clock)
        if hasattr(svi, "wait_for_compiles"):
            cell["compiles_done"] = svi.wait_for_compiles(opts.wait_s)
        for _ in range(3):  # the compiled graph swapped in, warm
            take(*args)
        cell["step_s"] = per_step(lambda: take(*args), opts.timed, cell["last_step_s"], sync)
        if options.get("backend") == "cudagraphs":
            cell["cuda_graphs"] = cuda_graph_captures(svi)
    cell["fell back to eager"] = sorted({str(w.message) for w in caught
                                         if FALLBACK in str(w.message)})
    del svi
    pyro.clear_param_store()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return cell


def run_torch(opts) -> None:
    import torch

    device = torch.device("cpu" if opts.cpu else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu.py: no CUDA device here (--cpu runs the dry run on the CPU)")
    skip = {"ours compiled + CUDA graph": "skipped: needs a CUDA device"} if opts.cpu else {}
    meta = {"torch": torch.__version__, "device": str(device), "python":
            platform.python_version(), "steps": opts.steps, "backend": opts.backend,
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}
    run_cells(opts, "torch", meta, [c for c in COLUMNS if c in TORCH_COLUMNS], skip,
              lambda column, label, bench: torch_cell(column, bench, opts, device))


# --- NumPyro --------------------------------------------------------------------------------
def numpyro_cell(runner, label: str, bench, opts) -> dict:
    """NumPyro's jitted update on the default JAX device: time to ``--steps`` steps from
    building SVI (the jit compile and 5 warm-up steps included), then µs per step."""
    clock = Clock(lambda: None)
    runner.step_time(label, bench, 1)  # build, init, jit, 5 warm-up steps and 1 step
    svi, update, args = runner.cache[label]
    state = svi.init(runner.jax.random.PRNGKey(0), *args)
    box = [state, None]

    def step():
        box[0], box[1] = update(box[0], *args)

    def sync():
        if box[1] is not None:
            box[1].block_until_ready()

    clock.sync = sync
    cell = time_to_n(step, opts.steps - 6, opts.cell_s, clock)
    cell["steps_run"] += 6
    cell["step_s"] = runner.step_time(label, bench, min(opts.timed, max(
        3, int(3.0 / max(cell["last_step_s"], 1e-6)))))
    return cell


def run_numpyro(opts) -> None:
    from bench_compiled import NumPyroRunner

    runner = NumPyroRunner()
    meta = {"steps": opts.steps, "python": platform.python_version()}
    if runner.missing:
        meta["missing"] = runner.missing
        skip = {"numpyro jit": "skipped: numpyro not installed"}
    else:
        meta.update(numpyro=runner.numpyro.__version__, jax=runner.jax.__version__,
                    device=str(runner.jax.devices()[0]))
        skip = {}
    run_cells(opts, "numpyro", meta, ["numpyro jit"], skip,
              lambda column, label, bench: numpyro_cell(runner, label, bench, opts))


# --- cells, files, report ---------------------------------------------------------------------
def run_cells(opts, part: str, meta: dict, columns: list, skip: dict, measure) -> None:
    """Measure each (model, column) cell, model by model, writing ``bench_<part>.json``
    after each; cells left when ``--budget-s`` is spent are recorded as not run."""
    started = time.perf_counter()
    out = Path(opts.out) / f"bench_{part}.json"
    rows = []
    for label, bench in benches(opts.cpu).items():
        row = {"model": label, "cells": {}}
        rows.append(row)
        for column in columns:
            if column in skip:
                cell = {"error": skip[column]}
            elif time.perf_counter() - started > opts.budget_s:
                cell = {"error": f"not run: the {opts.budget_s:g} s budget was spent"}
            else:
                try:
                    cell = measure(column, label, bench)
                except Exception as err:
                    cell = {"error": f"{type(err).__name__}: {err}"[:500]}
            row["cells"][column] = cell
            print(f"{label} | {column}: {summarize(cell)}", flush=True)
            write_json(out, {"meta": meta, "rows": rows})


def write_json(path: Path, data: dict) -> None:
    """Replace ``path`` whole (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def summarize(cell: dict | None) -> str:
    if not cell:
        return "-"
    if "error" in cell:
        return cell["error"] if cell["error"].startswith(("skipped", "not run")) else "failed"
    text = f"{1e6 * cell['step_s']:.0f} µs ({'~' if cell['estimated'] else ''}" \
           f"{cell['seconds']:.1f} s)"
    if cell.get("compiles_done") is False:
        text += " ‡"
    if cell.get("fell back to eager"):
        text += " †"
    if "cuda_graphs" in cell and not cell["cuda_graphs"]:
        text += " (no graph)"
    return text


def report(opts) -> None:
    out = Path(opts.out)
    parts = {p: json.loads((out / f"bench_{p}.json").read_text())
             for p in ("torch", "numpyro") if (out / f"bench_{p}.json").exists()}
    rows: dict[str, dict] = {}
    for part in parts.values():
        for row in part["rows"]:
            rows.setdefault(row["model"], {}).update(row["cells"])
    ratios_of = [("ours compiled", "pyro eager"), ("ours compiled", "numpyro jit"),
                 ("ours compiled + CUDA graph", "ours compiled")]
    lines = ["| model | " + " | ".join(COLUMNS) + " | compiled ÷ pyro eager | "
             "compiled ÷ numpyro | CUDA graph ÷ compiled |",
             "|---|" + "---|" * (len(COLUMNS) + len(ratios_of))]
    for model, cells in rows.items():
        ratios = [step_ratio(cells, ours, other) for ours, other in ratios_of]
        lines.append(f"| {model} | " + " | ".join(summarize(cells.get(c)) for c in COLUMNS)
                     + " | " + " | ".join(ratios) + " |")
    meta = {p: data["meta"] for p, data in parts.items()}
    notes = [f"{p}: " + ", ".join(f"{k} {v}" for k, v in m.items()) for p, m in meta.items()]
    errors = [f"- {model}, {column}: {cell['error']}" for model, cells in rows.items()
              for column, cell in cells.items() if "error" in cell]
    text = "\n".join([
        "µs per SVI step (Adam lr 0.01) and, in parentheses, seconds from building SVI to "
        "step N done (~: extrapolated from a run cut at --cell-s). ‡: the background "
        "compile had not finished (µs of the interim graph). †: fell back to eager. "
        "Ratios: µs per step of ours compiled ÷ the other (< 1: ours faster).", "",
        *lines, "", *notes, "", *errors]) + "\n"
    (out / "bench_gpu.md").write_text(text)
    write_json(out / "bench_gpu.json", {"meta": meta, "rows": rows})
    print(text)


def step_ratio(cells: dict, ours: str, other: str) -> str:
    """µs per step of ``ours`` ÷ ``other`` ("-" where either has none)."""
    a, b = cells.get(ours) or {}, cells.get(other) or {}
    if "step_s" not in a or "step_s" not in b:
        return "-"
    return f"{a['step_s'] / b['step_s']:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["torch", "numpyro", "report"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--cpu", action="store_true", help="the dry run: tiny, on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="N of time to N steps")
    parser.add_argument("--timed", type=int, default=200, help="steps timed per cell")
    parser.add_argument("--cell-s", type=float, default=12.0,
                        help="seconds a time-to-N run may take before it is extrapolated")
    parser.add_argument("--wait-s", type=float, default=20.0,
                        help="seconds to wait for a background compile before timing")
    parser.add_argument("--budget-s", type=float, default=170.0,
                        help="seconds for this part; cells after it are not run")
    parser.add_argument("--backend", default=None,
                        help="backend of 'ours compiled' (default: the estimator's, "
                             "'auto'; eager with --cpu)")
    opts = parser.parse_args(argv)
    if opts.steps is None:
        opts.steps = 30 if opts.cpu else 2000
    if opts.cpu:
        opts.timed = min(opts.timed, 10)
        opts.backend = opts.backend or "eager"
    {"torch": run_torch, "numpyro": run_numpyro, "report": report}[opts.part](opts)


if __name__ == "__main__":
    main()
