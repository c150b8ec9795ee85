"""An unchanged Pyro script, run as Pyro runs it and with the one-line switch.

    python benchmarks/bench_unchanged_script.py [--steps 2000] [--rounds 1] [--only SUBSTR]

For each model, a plain Pyro program (``pyro.infer.SVI`` and ``pyro.infer.<ELBO>``, a
model of ``models.py``, Adam, N steps) is written to a temporary file and run in fresh
processes, in one run, alternating:

- ``pyro``: ``python script.py``;
- ``switch``: ``pyro-svi-ext run --compile script.py`` (the drop-in switch with compiled
  steps: Pyro's eager ELBO names bound to this package's compiled-with-fallback steps).

Each run starts from an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR``: cold). The
script itself reports the seconds from constructing SVI to the last step; the harness
times the whole process (imports included: what ``python script.py`` takes). Both
columns include torch importing ``torch._dynamo`` at the first ``torch.optim``
optimizer, as the script's user would see. Writes
``benchmarks/results/unchanged_script.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_time_to_fit  # noqa: E402  (the same models, labels and ELBO arguments)

MODELS = {  # label: (models.py builder, pyro.infer ELBO, its arguments as source)
    label: (builder, elbo, ", ".join(f"{k}={v!r}" for k, v in kwargs.items()))
    for label, (builder, elbo, kwargs, *build) in bench_time_to_fit.MODELS.items()
    if not build  # default-sized models only: the script calls the builder bare
}
DEFAULT_MODELS = ["BLR N=1000 D=10", "GMM K=3 N=500, enumerated",  # HMM: Pyro takes 5 min
                  "TraceGraph non-reparam, plate N=200", "RenyiELBO alpha=0.5, 8 particles"]

SCRIPT = """\
import sys
import time

import pyro
import pyro.infer
import pyro.optim

sys.path.insert(0, {here!r})
import models

pyro.set_rng_seed(0)
model, guide, args = models.{builder}()
start = time.perf_counter()
svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({{"lr": 0.01}}),
                     pyro.infer.{elbo}({elbo_args}))
for step in range({steps}):
    loss = svi.step(*args)
print("FIT", time.perf_counter() - start, loss)
"""


def command(impl: str, script: Path) -> list[str]:
    if impl == "pyro":
        return [sys.executable, str(script)]
    cli = shutil.which("pyro-svi-ext", path=str(Path(sys.executable).parent))
    if cli is None:
        raise SystemExit("pyro-svi-ext is not installed beside this Python "
                         "(pip install -e . in this environment)")
    return [cli, "run", "--compile", str(script)]


def run(impl: str, script: Path, threads: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, PYTHONWARNINGS="ignore")
        if threads == "1":
            env["OMP_NUM_THREADS"] = "1"
        start = time.perf_counter()
        proc = subprocess.run(command(impl, script), env=env, capture_output=True,
                              text=True)
        process = time.perf_counter() - start
    fit = [line.split() for line in proc.stdout.splitlines() if line.startswith("FIT ")]
    if proc.returncode != 0 or not fit:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:200]}
    return {"fit_seconds": float(fit[-1][1]), "loss": float(fit[-1][2]),
            "process_seconds": process}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", help="models whose label contains this (HMM: add it)")
    parser.add_argument("--threads", default="1", choices=["1", "default"])
    opts = parser.parse_args()
    labels = [m for m in MODELS if opts.only in m] if opts.only else DEFAULT_MODELS
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="unchanged-script-") as tmp:
        for label in labels:
            builder, elbo, elbo_args = MODELS[label]
            script = Path(tmp) / f"fit_{builder}.py"
            script.write_text(SCRIPT.format(here=str(HERE), builder=builder, elbo=elbo,
                                            elbo_args=elbo_args, steps=opts.steps))
            runs: dict = {"pyro": [], "switch": []}
            for _ in range(opts.rounds):
                for impl in runs:
                    runs[impl].append(run(impl, script, opts.threads))
            results[label] = runs
            print(label, json.dumps(runs), flush=True)
    table = markdown(results, opts)
    print(table)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    meta = {"steps": opts.steps, "rounds": opts.rounds, "threads": opts.threads,
            "python": platform.python_version(), "cache": "cold (empty per run)"}
    (out / "unchanged_script.json").write_text(json.dumps({"meta": meta,
                                                           "results": results}, indent=2))
    (out / "unchanged_script.md").write_text(table + "\n")


def _median(runs: list, key: str):
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def markdown(results: dict, opts) -> str:
    lines = [f"An unchanged Pyro script, {opts.steps} steps, cold inductor cache, threads: "
             f"{opts.threads}; median of {opts.rounds} run(s), seconds.", "",
             "| model | Pyro: fit / process | switch: fit / process | Pyro ÷ switch "
             "(fit) | Pyro ÷ switch (process) |", "|---|---|---|---|---|"]
    for label, runs in results.items():
        cells, ratios = [], []
        for impl in ("pyro", "switch"):
            fit, process = _median(runs[impl], "fit_seconds"), _median(runs[impl],
                                                                       "process_seconds")
            cells.append("-" if fit is None else f"{fit:.1f} / {process:.1f}")
        for key in ("fit_seconds", "process_seconds"):
            a, b = _median(runs["pyro"], key), _median(runs["switch"], key)
            ratios.append("-" if a is None or b is None else f"{a / b:.2f}")
        lines.append(f"| {label} | {' | '.join(cells)} | {' | '.join(ratios)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
