"""TraceEnum_ELBO at scale, vs Pyro: many vectorized particles, local sampling with
many samples, an HMM enumerated in the guide.

    python benchmarks/bench_enum_scale.py [--steps 5]

Each (implementation, model) runs in a fresh process, one thread: one warm-up SVI step
(Adam), then the median time of ``--steps`` steps, and the peak of the bytes held by
live tensors during one more step, from the CPU allocator's events recorded by
``torch.profiler`` (the resident size of the process mostly measured glibc's free
lists: 82 MB vs 100 MB in one run, 100 vs 82 in the next).
Writes ``benchmarks/results/enum_scale.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import statistics, sys, time
import torch, pyro, pyro.infer, pyro.optim
import pyro.distributions as dist
from pyro.distributions import constraints
from pyro.ops.indexing import Vindex
import pyro_svi_ext
torch.set_num_threads(1)
impl, name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
api = pyro_svi_ext if impl == "ours" else pyro.infer
torch.manual_seed(0)

if name == "gmm_particles":  # K=3 mixture, N=200, 2000 vectorized particles
    K, N = 3, 200
    data = torch.cat([torch.randn(70) - 4, torch.randn(60), torch.randn(70) + 4])
    def model(data):
        weights = pyro.param("weights", torch.ones(K) / K, constraint=constraints.simplex)
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0).expand([K]).to_event(1))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("obs", dist.Normal(Vindex(locs)[..., z], scale), obs=data)
    def guide(data):
        loc = pyro.param("locs_loc", torch.tensor([-1.0, 0.0, 1.0]))
        pyro.sample("locs", dist.Normal(loc, 0.5).to_event(1))
        s = pyro.param("scale_loc", torch.tensor(0.0))
        pyro.sample("scale", dist.LogNormal(s, 0.2))
    elbo = api.TraceEnum_ELBO(num_particles=2000, vectorize_particles=True)
    args = (data,)
elif name == "local_samples":  # three guide sites, 2000 local samples each
    def model():
        for i, p in enumerate((0.1, 0.2, 0.3)):
            pyro.sample(f"x{i}", dist.Bernoulli(p))
    def guide():
        q = pyro.param("q", torch.tensor(0.75), constraint=constraints.unit_interval)
        for i in range(3):
            pyro.sample(f"x{i}", dist.Bernoulli(q),
                        infer={"enumerate": "parallel", "num_samples": 2000})
    elbo = api.TraceEnum_ELBO(max_plate_nesting=0)
    args = ()
elif name.startswith("guide_hmm"):  # K=2 HMM enumerated in the guide, T steps
    T = int(name.split("_")[-1])
    data = torch.ones(T)
    init = torch.tensor([0.5, 0.5])
    def chain(data, emit):
        trans = pyro.param("trans", torch.tensor([[0.75, 0.25], [0.25, 0.75]]),
                           constraint=constraints.simplex)
        emission = pyro.param("emission", torch.tensor([[0.75, 0.25], [0.25, 0.75]]),
                              constraint=constraints.simplex)
        x = None
        for i, y in pyro.markov(enumerate(data)):
            x = pyro.sample(f"x_{i}", dist.Categorical(init if x is None else trans[x]),
                            infer={} if emit else {"enumerate": "parallel"})
            if emit:
                pyro.sample(f"y_{i}", dist.Categorical(emission[x]), obs=y)
    model = lambda data: chain(data, True)
    guide = lambda data: chain(data, False)
    elbo = api.TraceEnum_ELBO(max_plate_nesting=0)
    args = (data,)

svi = api.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
svi.step(*args)
times = []
for _ in range(steps):
    start = time.perf_counter()
    svi.step(*args)
    times.append(time.perf_counter() - start)
# peak of the bytes held by live tensors during one more step: the allocator's own
# events (the process's resident size mostly measures the allocator's free lists)
from torch.profiler import ProfilerActivity, profile
with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
    svi.step(*args)
live = peak = 0
events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
for e in sorted(events, key=lambda e: e.start_ns()):
    live += e.nbytes()
    peak = max(peak, live)
print(statistics.median(times) * 1e3, peak / 2**20)
"""

MODELS = {
    "gmm_particles": "GMM K=3 N=200, 2000 vectorized particles",
    "local_samples": "3 guide sites, num_samples=2000 each",
    "guide_hmm_30": "HMM K=2 enumerated in the guide, T=30",
    "guide_hmm_50": "HMM K=2 enumerated in the guide, T=50",
}


def measure(impl: str, name: str, steps: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, impl, name, str(steps)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1]}
    ms, mb = map(float, proc.stdout.split())
    return {"ms": ms, "peak_tensor_MB": mb}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    opts = parser.parse_args(argv)
    rows = []
    for name, label in MODELS.items():
        row = {"model": label, **{impl: measure(impl, name, opts.steps)
                                  for impl in ("pyro", "ours")}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = ["| model | Pyro ms/step | ours ms/step | time ratio (Pyro / ours) | "
             "Pyro peak tensor MB | ours peak tensor MB |", "|---|---|---|---|---|---|"]
    for r in rows:
        p, o = r["pyro"], r["ours"]
        if "error" in p or "error" in o:
            lines.append(f"| {r['model']} | {p.get('ms', p.get('error'))} | "
                         f"{o.get('ms', o.get('error'))} | - | - | - |")
            continue
        lines.append(f"| {r['model']} | {p['ms']:.1f} | {o['ms']:.1f} | "
                     f"{p['ms'] / o['ms']:.2f} | {p['peak_tensor_MB']:.3g} | "
                     f"{o['peak_tensor_MB']:.3g} |")
    table = "\n".join(lines)
    print(table)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "enum_scale.json").write_text(json.dumps(rows, indent=2))
    (out / "enum_scale.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
