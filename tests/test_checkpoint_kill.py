"""A checkpointed fit killed with SIGKILL (in a step, in a save) resumes to the end of
the uninterrupted run: after every kill the newest complete checkpoint loads, and the
final losses, params, network buffers (BatchNorm statistics and batch count) and step
count are the uninterrupted run's, bit for bit (eager); within the compiled step's
verification tolerance, with the same integer state, for a compiled step."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import checkpoint_worker
import pytest
import torch

from pyro_svi_ext.infer import checkpoint_file

WORKER = Path(checkpoint_worker.__file__)
KILLED = -signal.SIGKILL


def _uninterrupted(steps: int, every: int, compiled: bool = False) -> dict:
    threads = torch.get_num_threads()
    try:
        return checkpoint_worker.outcome(*checkpoint_worker.fit(None, steps, every, compiled))
    finally:
        torch.set_num_threads(threads)


def _start(tmp_path, steps: int, every: int, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "result.pt"),
                             str(tmp_path / "fit.ckpt"), str(steps), str(every), *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen) -> int:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode in (0, KILLED), err.decode()[-3000:]
    return proc.returncode


def _newest_checkpoint_loads(tmp_path) -> int:
    """The step count of the checkpoint on disk (which must read whole); 0 if none yet."""
    path = tmp_path / "fit.ckpt"
    return checkpoint_file.read(path)["steps"] if path.exists() else 0


def _assert_equal(resumed: dict, reference: dict) -> None:
    assert resumed["steps"] == reference["steps"]
    assert resumed["losses"] == reference["losses"]
    assert resumed["params"].keys() == reference["params"].keys()
    for name, value in reference["params"].items():
        assert torch.equal(resumed["params"][name], value), name
    for name, value in reference["buffers"].items():
        assert torch.equal(resumed["buffers"][name], value), name


def test_a_fit_killed_in_a_step_and_in_a_save_ends_as_the_uninterrupted_one(tmp_path):
    reference = _uninterrupted(24, 3)
    # killed in the 8th step: checkpoints of steps 3 and 6 were written
    assert _finish(_start(tmp_path, 24, 3, "--die-in-step", "8")) == KILLED
    assert _newest_checkpoint_loads(tmp_path) == 6
    # resumed at 6, killed halfway through writing its 3rd checkpoint (step 15)
    assert _finish(_start(tmp_path, 24, 3, "--die-in-save", "3")) == KILLED
    assert _newest_checkpoint_loads(tmp_path) == 12
    assert list(tmp_path.glob(".fit.ckpt.*.partial"))  # the torn write, beside it
    assert _finish(_start(tmp_path, 24, 3)) == 0
    _assert_equal(torch.load(tmp_path / "result.pt"), reference)
    assert not list(tmp_path.glob(".fit.ckpt.*.partial"))  # the dead writer's, removed


def _kill_at_random(tmp_path, steps: int, every: int, kills: int, *options: str,
                    seed: int = 0) -> dict:
    """One kill in a step and one in a save, then ``kills`` SIGKILLs at random moments
    of the steps and saves, each in a process resuming from the last one's checkpoint
    (one that ends before its kill starts the fit over), then a run to the end; returns
    where the kills landed."""
    rng = random.Random(seed)
    events = tmp_path / "events.txt"
    landed = {"save": 0, "step": 0, "other": 0}
    plan = [("--die-in-step", "5"), ("--die-in-save", "2")] + [None] * kills + [()]
    while plan:
        forced = plan[0]
        events.write_text("")
        proc = _start(tmp_path, steps, every, "--events", str(events), "--slow-saves",
                      "0.005", *options, *(forced or ()))
        if forced is None:
            while "ready" not in events.read_text() and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.25))
            proc.send_signal(signal.SIGKILL)
        if _finish(proc) == KILLED:
            last = (events.read_text().strip().splitlines() or ["ready"])[-1]
            landed["save" if last.startswith("save-begin") else
                   "step" if last.startswith("step") else "other"] += 1
            _newest_checkpoint_loads(tmp_path)  # every time, it reads whole
        elif forced != ():  # it ended before its kill: the fit starts over
            (tmp_path / "fit.ckpt").unlink()
            continue
        plan.pop(0)
    return landed


@pytest.mark.slow
def test_random_kills_in_steps_and_saves_resume_bit_for_bit_eager(tmp_path):
    reference = _uninterrupted(150, 5)
    landed = _kill_at_random(tmp_path, 150, 5, kills=10)
    print(f"kills landed: {landed}")
    assert sum(landed.values()) >= 12 and landed["save"] >= 2 and landed["step"] >= 2
    _assert_equal(torch.load(tmp_path / "result.pt"), reference)


@pytest.mark.slow
def test_random_kills_resume_a_compiled_fit_within_its_tolerance(tmp_path):
    reference = _uninterrupted(60, 3, compiled=True)
    landed = _kill_at_random(tmp_path, 60, 3, 10, "--compiled", seed=1)
    assert sum(landed.values()) >= 12
    resumed = torch.load(tmp_path / "result.pt")
    assert resumed["steps"] == reference["steps"]
    assert reference["compiles"] >= 1 and resumed["compiles"] >= 1  # compiled steps ran
    torch.testing.assert_close(resumed["losses"], reference["losses"], rtol=1e-4, atol=1e-4)
    for kind in ("params", "buffers"):
        for name, value in reference[kind].items():
            if value.dtype.is_floating_point:
                torch.testing.assert_close(resumed[kind][name], value, rtol=1e-4, atol=1e-5)
            else:  # the integer state (the BatchNorm's batch count): equal
                assert torch.equal(resumed[kind][name], value), name
