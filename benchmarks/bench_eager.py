"""Eager SVI steps: this package's estimators vs Pyro's own, timed in one run.

    python benchmarks/bench_eager.py [--steps 300] [--rounds 7] [--only SUBSTR] [--out DIR]

Both implementations run the same model, guide, data and optimizer, interleaved in
rounds so machine noise hits both alike; the figure that matters is the ratio
(Pyro's time per step / ours), reported as the median over rounds. Writes a
Markdown table and JSON to ``--out`` (default ``benchmarks/results``).

For the rows in ``FLOOR`` it also times a *floor*: the same model and guide run under a
bare recording messenger (no checks, no bookkeeping), the log-prob sums, ``backward``
and one ``foreach`` Adam step. Every implementation over Pyro's trace layer pays at
least that, so Pyro / floor is the most any of them could gain on that model. The
RenyiELBO floor runs its particles one after another, as the estimator does; the GMM's
floor enumerates the model's one discrete site (``poutine.enum``) and sums it out with
one ``logsumexp``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import pyro
import pyro.infer
import pyro.optim
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models

import pyro_svi_ext

BENCHES = {  # label: (build, estimator name in both pyro.infer and pyro_svi_ext)
    "Trace_ELBO: blr N=1000 D=10 (hand guide)": (models.blr, "Trace_ELBO"),
    "Trace_ELBO: blr N=1000 D=10 (AutoNormal)": (models.blr_autonormal, "Trace_ELBO"),
    "Trace_ELBO: 20 latent sites": (models.many_sites, "Trace_ELBO"),
    "TraceGraph_ELBO: 8 Bernoulli latents, plates + baselines": (models.discrete_plates,
                                                                 "TraceGraph_ELBO"),
    "TraceGraph_ELBO: sequential plate T=20": (models.sequential_bernoulli, "TraceGraph_ELBO"),
    "TraceEnum_ELBO: GMM K=3 N=500": (models.gmm_enum, "TraceEnum_ELBO"),
    "TraceEnum_ELBO: HMM K=4 T=100": (models.hmm_enum, "TraceEnum_ELBO"),
    "RenyiELBO (8 particles): blr N=1000 D=10": (models.blr, "RenyiELBO"),
}
ELBO_KWARGS = {
    "TraceEnum_ELBO": {"max_plate_nesting": 1},
    "RenyiELBO": {"num_particles": 8},
}
IMPLS = {
    "pyro": (pyro.infer.SVI, pyro.infer),
    "pyro_svi_ext": (pyro_svi_ext.SVI, pyro_svi_ext),
}


#: rows that also time the floor: label -> how it combines the log-prob terms
FLOOR = {
    "Trace_ELBO: blr N=1000 D=10 (hand guide)": "trace",
    "Trace_ELBO: blr N=1000 D=10 (AutoNormal)": "trace",
    "Trace_ELBO: 20 latent sites": "trace",
    "TraceEnum_ELBO: GMM K=3 N=500": "enum",
    "RenyiELBO (8 particles): blr N=1000 D=10": "renyi",
}
RENYI_ALPHA = 0.0  # pyro_svi_ext's and Pyro's default


class _BareRecorder(Messenger):
    """Keeps ``(fn, value)`` of each sample site; replays ``values`` at latent sites."""

    def __init__(self, values: dict | None = None):
        super().__init__()
        self.sites: dict = {}
        self.values = values or {}

    def _pyro_sample(self, msg):
        if not msg["is_observed"] and msg["name"] in self.values:
            msg["value"], msg["done"] = self.values[msg["name"]], True

    def _pyro_post_sample(self, msg):
        if type(msg["fn"]).__name__ != "_Subsample":
            self.sites[msg["name"]] = (msg["fn"], msg["value"])


def _log_joint_minus_log_q(model, guide, args, enum: bool):
    """``log p(x, z) - log q(z)`` for one draw of the guide (the enumerated site summed
    out with ``logsumexp`` over the dims left of the one plate when ``enum``)."""
    q = _BareRecorder()
    with q:
        guide(*args)
    p = _BareRecorder({k: v for k, (_, v) in q.sites.items()})
    run = poutine.enum(model, first_available_dim=-2) if enum else model
    with p:
        run(*args)
    log_q = sum(fn.log_prob(v).sum() for fn, v in q.sites.values())
    if not enum:
        return sum(fn.log_prob(v).sum() for fn, v in p.sites.values()) - log_q
    terms = [fn.log_prob(v) for fn, v in p.sites.values()]
    flat = [t.sum() for t in terms if t.dim() < 2]
    joint = sum(t for t in terms if t.dim() >= 2)
    return sum(flat) + joint.logsumexp(0).sum() - log_q


def floor_step(model, guide, args, kind: str = "trace", num_particles: int = 1):
    """One step of the floor: guide and model (replayed) under :class:`_BareRecorder`,
    the loss from the log-prob terms (``kind``: "trace", "enum" or "renyi", the latter
    over ``num_particles`` draws), ``backward``, a foreach Adam step (lr 0.01)."""
    guide(*args)  # creates the params
    params = [p.unconstrained() for p in pyro.get_param_store().values()]
    adam = torch.optim.Adam(params, lr=0.01, foreach=True)

    def step():
        if kind == "renyi":
            w = torch.stack([_log_joint_minus_log_q(model, guide, args, False)
                             for _ in range(num_particles)])
            a = 1.0 - RENYI_ALPHA
            loss = -(torch.logsumexp(a * w, 0) - math.log(num_particles)) / a
        else:
            loss = -_log_joint_minus_log_q(model, guide, args, kind == "enum")
        adam.zero_grad()
        loss.backward()
        adam.step()

    return step


def time_steps(impl: str, build, estimator: str, steps: int, floor_kind: str = "trace") -> float:
    """Seconds per SVI step (after 20 warm-up steps); ``floor_kind`` for ``impl="floor"``."""
    if impl == "floor":
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        step = floor_step(*build(), kind=floor_kind,
                          num_particles=ELBO_KWARGS.get(estimator, {}).get("num_particles", 1))
        for _ in range(20):
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps
    svi_cls, namespace = IMPLS[impl]
    elbo_cls = getattr(namespace, estimator)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide, args = build()
    svi = svi_cls(model, guide, pyro.optim.Adam({"lr": 0.01}),
                  elbo_cls(**ELBO_KWARGS.get(estimator, {})))
    for _ in range(20):
        svi.step(*args)
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(*args)
    return (time.perf_counter() - start) / steps


def run(steps: int, rounds: int, only: str = "") -> list[dict]:
    rows = []
    for label, (build, estimator) in BENCHES.items():
        if only not in label:
            continue
        impls = [*IMPLS, *(["floor"] if label in FLOOR else [])]
        ratios, per_impl = [], {k: [] for k in impls}
        for _ in range(rounds):
            t = {impl: time_steps(impl, build, estimator, steps, FLOOR.get(label, "trace"))
                 for impl in impls}
            for impl, v in t.items():
                per_impl[impl].append(v)
            ratios.append(t["pyro"] / t["pyro_svi_ext"])
        rows.append({
            "model": label,
            "pyro_ms_per_step": 1e3 * statistics.median(per_impl["pyro"]),
            "ours_ms_per_step": 1e3 * statistics.median(per_impl["pyro_svi_ext"]),
            "speedup_median": statistics.median(ratios),
            "speedup_min": min(ratios),
            "speedup_max": max(ratios),
        })
        if "floor" in per_impl:  # fastest round of each: the floor is a lower bound
            rows[-1]["floor_ms_per_step"] = 1e3 * min(per_impl["floor"])
            rows[-1]["pyro_over_floor"] = min(per_impl["pyro"]) / min(per_impl["floor"])
            rows[-1]["ours_over_floor"] = (min(per_impl["pyro_svi_ext"])
                                           / min(per_impl["floor"]))
        print(f"{label}: {rows[-1]['speedup_median']:.2f}x", flush=True)
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "| estimator: model | Pyro ms/step | pyro_svi_ext ms/step | speedup (median, min-max) "
        "| floor ms/step | Pyro / floor | ours / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        floor = ("| - | - | -" if "floor_ms_per_step" not in r else
                 f"| {r['floor_ms_per_step']:.3f} | {r['pyro_over_floor']:.2f} | "
                 f"{r['ours_over_floor']:.2f}")
        lines.append(
            f"| {r['model']} | {r['pyro_ms_per_step']:.3f} | {r['ours_ms_per_step']:.3f} | "
            f"{r['speedup_median']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f}) "
            f"{floor} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", default="", help="run benchmarks whose label has this")
    parser.add_argument("--no-validation", action="store_true",
                        help="pyro.enable_validation(False) for both implementations")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    if opts.no_validation:
        pyro.enable_validation(False)
    rows = run(opts.steps, opts.rounds, opts.only)
    table = to_markdown(rows)
    print(table)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "pyro": pyro.__version__,
            "validation": not opts.no_validation,
            "python": platform.python_version(), "threads": 1,
            "steps": opts.steps, "rounds": opts.rounds}
    name = "eager_novalidation" if opts.no_validation else "eager"
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / f"{name}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
