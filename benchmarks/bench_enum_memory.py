"""Memory of one TraceEnum_ELBO step on an HMM (K=8) as the chain grows, vs Pyro.

    python benchmarks/bench_enum_memory.py [--lengths 500 1000 2000]

Two measures per (implementation, T), each in a fresh process: the bytes autograd keeps
for the backward pass (saved tensors), and the growth of the process's peak resident
memory during the step. Writes ``benchmarks/results/enum_memory.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import resource, sys, torch, pyro, pyro.infer
import pyro.distributions as dist
from pyro.distributions import constraints
import pyro_svi_ext
impl, T, K = sys.argv[1], int(sys.argv[2]), 8
torch.manual_seed(0)
data = torch.randn(T)
def model(data):
    trans = pyro.param("trans", torch.ones(K, K) / K, constraint=constraints.simplex)
    locs = pyro.param("locs", torch.arange(K).float())
    x = 0
    for t in pyro.markov(range(len(data))):
        x = pyro.sample(f"x_{t}", dist.Categorical(trans[x]), infer={"enumerate": "parallel"})
        pyro.sample(f"y_{t}", dist.Normal(locs[x], 1.0), obs=data[t])
elbo = (pyro_svi_ext if impl == "ours" else pyro.infer).TraceEnum_ELBO(max_plate_nesting=0)
seen, total = set(), [0]
def pack(t):
    key = (t.untyped_storage().data_ptr(), t.dtype)
    if key not in seen:
        seen.add(key); total[0] += t.untyped_storage().nbytes()
    return t
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    elbo.loss_and_grads(model, lambda data: None, data)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(total[0], (after - before) * 1024)
"""


def measure(impl: str, length: int) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, impl, str(length)], check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    opts = parser.parse_args(argv)
    rows = []
    for length in opts.lengths:
        row = {"T": length}
        for impl in ("pyro", "ours"):
            saved, rss = measure(impl, length)
            row[f"{impl}_saved_MB"] = saved / 2**20
            row[f"{impl}_peak_rss_growth_MB"] = rss / 2**20
        rows.append(row)
        print(row, flush=True)
    lines = ["| T | Pyro saved MB | ours saved MB | Pyro peak RSS growth MB | "
             "ours peak RSS growth MB |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['T']} | {r['pyro_saved_MB']:.2f} | {r['ours_saved_MB']:.2f} | "
                     f"{r['pyro_peak_rss_growth_MB']:.1f} | {r['ours_peak_rss_growth_MB']:.1f} |")
    table = "\n".join(lines)
    print(table)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "enum_memory.json").write_text(json.dumps(rows, indent=2))
    (out / "enum_memory.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
