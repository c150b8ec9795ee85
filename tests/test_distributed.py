"""DistributedSVI over two gloo processes on localhost (``distributed_worker.py``), against
one process running the same scenario; plus a world of one in this process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_svi_ext as ext
from pyro_svi_ext.infer.distributed import DistributedSVI, ShardingError

WORKER = Path(__file__).with_name("distributed_worker.py")
#: how long a launch may take before its processes are killed
LAUNCH_TIMEOUT = 240

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not built in this torch")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def launch(scenario: str, tmp_path: Path, world: int = 2, wait_for: int | None = None):
    """Run ``scenario`` on ``world`` processes; returns ``(results, exit codes)`` by rank.
    ``wait_for=r``: only rank ``r`` is waited for; the others are killed after it."""
    port = str(_free_port())
    outs = [tmp_path / f"{scenario}-{r}.json" for r in range(world)]
    procs = [subprocess.Popen(
        [sys.executable, str(WORKER), scenario, str(out)],
        env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for r, out in enumerate(outs)]
    try:
        waited = procs if wait_for is None else [procs[wait_for]]
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        for p in waited:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stderr.close()
    results = [json.loads(o.read_text()) if o.exists() else None for o in outs]
    return results, [p.returncode for p in procs]


def one_process(scenario: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{scenario}-single.json"
    subprocess.run([sys.executable, str(WORKER), scenario, str(out)], env=_env(),
                   check=True, timeout=LAUNCH_TIMEOUT, capture_output=True)
    return json.loads(out.read_text())


def _max_diff(a, b) -> float:
    return float((torch.tensor(a, dtype=torch.float64)
                  - torch.tensor(b, dtype=torch.float64)).abs().max())


def test_exact_draws_equal_one_process_eager_and_compiled(tmp_path):
    (rank0, rank1), codes = launch("exact", tmp_path)
    single = one_process("exact", tmp_path)
    assert codes == [0, 0], (rank0, rank1)
    for run in ("trace", "jit_trace", "enum", "jit_enum"):
        want, got = single[run], rank0[run]
        assert len(got["losses"]) == 20
        rel = _max_diff(got["losses"], want["losses"]) / max(map(abs, want["losses"]))
        assert rel < 1e-5, (run, got["losses"], want["losses"])
        assert want["params"].keys() == got["params"].keys()
        for name, value in want["params"].items():
            assert _max_diff(got["params"][name], value) < 1e-5, (run, name)
            assert rank1[run]["params"][name] == got["params"][name], (run, name)
        assert rank1[run]["losses"] == got["losses"]
    # the compiled estimators ran a compiled graph on the sharded data, not the eager step
    assert rank0["jit_trace"]["compiles"] >= 1 and rank0["jit_enum"]["compiles"] >= 1


def test_tracegraph_baselines_exact_draws_and_per_datum_averages(tmp_path):
    (rank0, rank1), codes = launch("tracegraph", tmp_path)
    single = one_process("tracegraph", tmp_path)
    assert codes == [0, 0], (rank0, rank1)
    avg_p = "__baseline_avg_downstream_cost_p"
    for run in ("tracegraph", "jit_tracegraph"):
        want, got = single[run], rank0[run]
        rel = _max_diff(got["losses"], want["losses"]) / max(map(abs, want["losses"]))
        assert rel < 1e-5, (run, got["losses"], want["losses"])
        assert want["params"].keys() == got["params"].keys()
        for name, value in want["params"].items():  # the global average included
            assert _max_diff(got["params"][name], value) < 1e-5, (run, name)
            assert rank1[run]["params"][name] == got["params"][name], (run, name)
        assert avg_p in got["params"]
    assert rank0["jit_tracegraph"]["compiles"] >= 1
    # a per-datum site's average: one per datum of the rank's block, kept per rank
    local0, local1 = rank0["local"], rank1["local"]
    avg_k = "__baseline_avg_downstream_cost_k"
    assert local0["averages"][avg_k] == [32] and single["local"]["averages"][avg_k] == [64]
    assert local0["params"][avg_k] != local1["params"][avg_k]
    for name in ("a", "b", "logits", avg_p):
        assert local0["params"][name] == local1["params"][name], name
    assert all(map(lambda v: v == v, local0["losses"]))  # finite, no shape error


def test_independent_draws_recover_the_conjugate_posterior(tmp_path):
    (rank0, rank1), codes = launch("independent", tmp_path)
    single = one_process("independent", tmp_path)
    assert codes == [0, 0], (rank0, rank1)
    for run in (single, rank0):
        params = run["params"]
        assert abs(params["AutoNormal.locs.loc"] - run["post_mean"]) < 0.03
        assert abs(params["AutoNormal.scales.loc"] - run["post_sd"]) < 0.01
    assert rank0["params"] == rank1["params"]  # identical after every step
    # independent draws: not the one-process run
    assert rank0["params"] != single["params"]
    # a plate with subsample_size indexing full data: ranks agree too
    assert rank0["indexed"]["params"] == rank1["indexed"]["params"]


def test_a_rank_that_raises_stops_the_other_with_its_error(tmp_path):
    (rank0, rank1), _ = launch("raise", tmp_path)
    assert rank0["type"] == "DistributedStepError"
    assert "rank 1: ValueError: rank 1's model failed on purpose" in rank0["error"]
    assert rank0["fault_seconds"] < 5.0  # the timeout given to DistributedSVI
    assert rank1["type"] == "ValueError"
    assert rank0["unchanged"] and rank1["unchanged"]


@pytest.mark.parametrize("how", ["die", "hang"])
def test_a_rank_that_dies_or_hangs_ends_the_other_within_the_timeout(tmp_path, how):
    (rank0, _), codes = launch(how, tmp_path, wait_for=0)
    assert rank0["type"] == "DistributedStepError", rank0
    assert "within 5 s" in rank0["error"]
    assert rank0["fault_seconds"] < 5.0 + 3.0
    assert rank0["unchanged"]
    if how == "die":
        assert codes[1] == 3


def test_mismatched_structure_is_caught_before_any_gradient_moves(tmp_path):
    results, _ = launch("mismatch", tmp_path)
    for result in results:
        assert result["type"] == "DistributedStepError"
        assert "shape (1,)" in result["error"] and "shape (2,)" in result["error"]
        assert result["sums"] == 0  # no gradient all-reduce was started


def test_a_step_after_the_first_makes_one_collective(tmp_path):
    (rank0, rank1), codes = launch("collectives", tmp_path)
    assert codes == [0, 0], (rank0, rank1)
    for result in (rank0, rank1):
        assert result["counts"][0] > 1  # step 1: header, structures, params, gradients
        assert result["counts"][1:] == [1] * 5  # flags, loss and gradients in one bucket


def test_a_param_created_late_on_every_rank_joins_the_exchange(tmp_path):
    (rank0, rank1), codes = launch("late_alike", tmp_path)
    assert codes == [0, 0], (rank0, rank1)
    assert rank0["error"] is None and "late_scale" in rank0["params"]
    assert rank0["params"] == rank1["params"]
    assert rank0["params"]["late_scale"] != 1.0  # it was trained


def test_a_param_created_late_on_one_rank_stops_every_rank(tmp_path):
    results, _ = launch("late_one", tmp_path)
    for result in results:
        assert result["type"] == "DistributedStepError", result
        assert "late_scale" in result["error"] and "rank 1" in result["error"]
        assert result["unchanged"]


def test_a_plate_the_world_does_not_divide_is_refused_on_every_rank(tmp_path):
    results, _ = launch("uneven", tmp_path)
    for result in results:
        assert result["type"] == "ShardingError"
        assert "63 rows" in result["error"] and "2 processes" in result["error"]


def test_checkpoint_on_rank_0_resumes_every_rank(tmp_path):
    """Every rank gets its own random state and the step count back; a planted pickle
    at the path is refused on every rank and runs nothing."""
    results, codes = launch("checkpoint", tmp_path)
    assert codes == [0, 0]
    for result in results:
        assert result["resumed"]["losses"] == result["straight"]["losses"][5:]
        assert result["resumed"]["params"] == result["straight"]["params"]
        assert result["steps"] == 5
        assert "refused" in result["refused"] and not result["ran"]


# --- a world of one (plain `python script.py`) ----------------------------------------------
def _blr(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Bernoulli(logits=x @ w), obs=y)


def test_a_world_of_one_is_plain_svi(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    x = torch.randn(40, 3)
    y = (x[:, 0] > 0).float()
    losses = {}
    for cls in (ext.SVI, DistributedSVI):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = cls(_blr, AutoNormal(_blr), pyro.optim.Adam({"lr": 0.05}), ext.Trace_ELBO())
        losses[cls] = [svi.step(x, y) for _ in range(5)]
    assert losses[ext.SVI] == losses[DistributedSVI]


def test_a_missing_plate_and_renyi_are_refused_clearly(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    x = torch.randn(40, 3)
    y = (x[:, 0] > 0).float()
    svi = DistributedSVI(_blr, AutoNormal(_blr), pyro.optim.Adam({"lr": 0.05}),
                         ext.Trace_ELBO(), plate="batch")
    with pytest.raises(ShardingError, match=r"no plate named 'batch'.*\['data'\]"):
        svi.step(x, y)
    with pytest.raises(ValueError, match="RenyiELBO"):
        DistributedSVI(_blr, AutoNormal(_blr), pyro.optim.Adam({"lr": 0.05}),
                       ext.RenyiELBO())
