"""Checkpoints for every SVI: safe to load (a planted pickle runs nothing; a corrupt,
truncated or foreign file is one clear error naming it), never half-written, complete
(params, networks' buffers, optimizer state, step count, random states, losses) and
refused, before anything changes, when they are of another model."""

from __future__ import annotations

import io
import logging
import pickle
import random
import subprocess
import sys

import checkpoint_worker
import numpy as np
import pyro
import pyro.optim
import pytest
import torch
from pyro.distributions import constraints

import pyro_svi_ext as ext
from pyro_svi_ext.errors import CheckpointError, CheckpointMismatchError
from pyro_svi_ext.infer import checkpoint_file
from pyro_svi_ext.infer.checkpoint_file import constraint_from_spec, constraint_spec
from pyro_svi_ext.infer.fit import Convergence

X = checkpoint_worker.data()


def _svi(net=None, optim=None, elbo=None, hidden: int = checkpoint_worker.H):
    """The worker's model and guide (a BatchNorm network under pyro.module)."""
    checkpoint_worker.H, saved = hidden, checkpoint_worker.H
    try:
        built_net, model, guide = checkpoint_worker.build()
    finally:
        checkpoint_worker.H = saved
    svi = ext.SVI(model, guide, optim or pyro.optim.Adam({"lr": 0.02}),
                  elbo or ext.Trace_ELBO())
    return svi, built_net


def _state():
    store = pyro.get_param_store()
    return {k: v.detach().clone() for k, v in store.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- a resumed run is the run it continues --------------------------------------------------
def test_save_then_load_into_a_fresh_store_continues_bit_for_bit(tmp_path):
    pyro.set_rng_seed(0)
    svi, net = _svi()
    straight = [svi.step(X) for _ in range(10)]
    params, buffers = _state(), {k: b.clone() for k, b in net.named_buffers()}
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi, net = _svi()
    first = [svi.step(X) for _ in range(4)]
    svi.save(tmp_path / "run.ckpt")
    pyro.clear_param_store()
    pyro.set_rng_seed(12345)  # the random state too comes from the checkpoint
    svi, net = _svi()
    svi.load(tmp_path / "run.ckpt")
    assert svi.step_count == 4
    rest = [svi.step(X) for _ in range(6)]
    assert first + rest == straight and svi.step_count == 10
    assert _same(_state(), params)
    assert _same({k: b for k, b in net.named_buffers()}, buffers)
    # the network computes with the store's tensors (as if it had trained here)
    assert net[0].weight is pyro.get_param_store().get_param("encoder$$$0.weight")


def test_a_load_mid_run_rewinds_in_place_for_eager_and_compiled_steps(tmp_path):
    for elbo in (ext.Trace_ELBO(), ext.JitTrace_ELBO(backend="eager",
                                                     background_compile=False)):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi, _ = _svi(optim=pyro.optim.SGD({"lr": 0.01}), elbo=elbo)
        for _ in range(3):
            svi.step(X)
        svi.save(tmp_path / "rewind.ckpt")
        tensors = dict(pyro.get_param_store().named_parameters())
        after = [svi.step(X) for _ in range(4)]
        svi.load(tmp_path / "rewind.ckpt")
        again = [svi.step(X) for _ in range(4)]
        if isinstance(elbo, ext.JitTrace_ELBO):
            # the sentinel checked step 4 the first time (an eager step), not the second:
            # the compiled step's rounding, within its verification tolerance
            assert again == pytest.approx(after, rel=1e-5)
        else:
            assert again == after
        # the same tensors (a compiled step's inputs), rewritten in place
        assert all(t is tensors[k] for k, t in pyro.get_param_store().named_parameters())


def test_the_buffers_of_a_pyro_module_guide_are_restored(tmp_path):
    from pyro.nn import PyroModule, PyroParam

    class CountingGuide(PyroModule):
        def __init__(self):
            super().__init__()
            self.loc = PyroParam(torch.tensor(0.0))
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))

        def forward(self, x):
            self.calls += 1
            pyro.sample("z", pyro.distributions.Normal(self.loc, 1.0).expand([2])
                        .to_event(1))

    def model(x):
        pyro.sample("z", pyro.distributions.Normal(0.0, 1.0).expand([2]).to_event(1))

    svi = ext.SVI(model, CountingGuide(), pyro.optim.Adam({"lr": 0.1}), ext.Trace_ELBO())
    for _ in range(3):
        svi.step(X)
    svi.save(tmp_path / "pyromodule.ckpt")
    pyro.clear_param_store()
    guide = CountingGuide()
    svi = ext.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), ext.Trace_ELBO())
    svi.load(tmp_path / "pyromodule.ckpt")
    assert int(guide.calls) == 3 and svi.step_count == 3


def test_every_random_state_is_restored(tmp_path):
    svi, _ = _svi()
    svi.step(X)
    svi.save(tmp_path / "rng.ckpt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    svi.load(tmp_path / "rng.ckpt")
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_constraints_are_stored_as_specs_and_come_back_as_the_same_constraints():
    cases = [constraints.real, constraints.positive, constraints.simplex,
             constraints.lower_cholesky, constraints.unit_interval,
             constraints.interval(0.0, 1.0), constraints.greater_than(-2.0),
             constraints.independent(constraints.interval(0.1, 2.0), 1)]
    for constraint in cases:
        spec = constraint_spec(constraint, "p")
        back = constraint_from_spec(spec)
        assert type(back) is type(constraint) and vars(back).keys() == vars(constraint).keys()
        assert constraint_spec(back, "p") == spec
    assert constraint_spec(constraints.interval(0.0, 1.0), "p") == {
        "name": "interval", "args": [0.0, 1.0]}

    class Custom(constraints.Constraint):
        def check(self, value):
            return value > 0

    with pytest.raises(CheckpointError, match="param 'odd'"):
        constraint_spec(Custom(), "odd")


def test_the_file_holds_the_whole_state(tmp_path):
    svi, _ = _svi()
    svi.fit(3, X, progress_bar=False, checkpoint=tmp_path / "whole.ckpt", checkpoint_every=2,
            convergence=Convergence(window=10, rtol=1e-3))
    data = checkpoint_file.read(tmp_path / "whole.ckpt")
    assert data["version"] == checkpoint_file.VERSION and data["steps"] == 3
    assert data["params"]["scale"]["constraint"] == {"name": "interval", "args": [0.1, 2.0]}
    buffers = data["networks"]["encoder"]["buffers"]
    assert set(buffers) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert int(buffers["1.num_batches_tracked"]) == 3
    assert set(data["optim"]["states"]) == set(data["params"])
    assert len(data["losses"]) == 3 and data["convergence"] == {"window": 10, "rtol": 1e-3}
    assert {"python", "numpy", "torch", "cuda"} <= set(data["rng"][0])


# --- fit(checkpoint=...) ----------------------------------------------------------------------
def test_fit_resumes_from_its_checkpoint_with_the_whole_history(tmp_path, caplog):
    path = tmp_path / "fit.ckpt"
    svi, _ = _svi()
    svi.fit(4, X, progress_bar=False, checkpoint=path, checkpoint_every=2)
    first = list(svi.losses)
    pyro.clear_param_store()
    svi, _ = _svi()
    with caplog.at_level(logging.INFO, logger="pyro_svi_ext.infer.fit"):
        history = svi.fit(100, X, progress_bar=False, checkpoint=path, checkpoint_every=2,
                          convergence=Convergence(window=2, rtol=1e6))
    (record,) = [r for r in caplog.records if "resuming" in r.getMessage()]
    assert str(path) in record.getMessage() and "4 of 100 steps" in record.getMessage()
    # convergence saw the restored losses: it stops after one more step
    assert history[:4] == first and len(history) == 5 and svi.step_count == 5
    assert history.stop_reason.startswith("converged at step 4")
    again = svi.fit(100, X, progress_bar=False, checkpoint=path)  # it had ended
    assert list(again) == list(history) and svi.step_count == 5


# --- safe to load ------------------------------------------------------------------------------
class Planted:
    """Unpickling this creates a marker file (what an attacker's file would run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
@pytest.mark.parametrize("cls", [ext.SVI, ext.DistributedSVI])
def test_a_planted_pickle_is_refused_and_runs_nothing(tmp_path, how, cls):
    path, marker = tmp_path / "model.ckpt", tmp_path / "pwned"
    with open(path, "wb") as f:
        if how == "pickle":
            pickle.dump({"format": "pyro_svi_ext.checkpoint", "x": Planted(marker)}, f)
        else:
            torch.save({"format": "pyro_svi_ext.checkpoint", "x": Planted(marker)}, f)
    model, guide = checkpoint_worker.build()[1:]
    svi = cls(model, guide, pyro.optim.Adam({"lr": 0.1}), ext.Trace_ELBO())
    before = torch.get_rng_state()
    with pytest.raises(CheckpointError, match="refused") as info:
        svi.load(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="refused"):
        svi.fit(3, X, checkpoint=path, progress_bar=False)
    assert not marker.exists()
    assert len(pyro.get_param_store()) == 0 and svi.step_count == 0
    assert torch.equal(torch.get_rng_state(), before)


def _written(tmp_path) -> bytes:
    svi, _ = _svi()
    svi.step(X)
    svi.save(tmp_path / "good.ckpt")
    pyro.clear_param_store()
    return (tmp_path / "good.ckpt").read_bytes()


@pytest.mark.parametrize("damage, message", [
    (lambda good: good[:len(good) // 2], "cannot read checkpoint"),
    (lambda good: b"", "cannot read checkpoint"),
    (lambda good: b"\x00garbage" * 50, "refused to load .* not a checkpoint"),
    (lambda good: _torch_bytes({"weights": torch.ones(2)}), "not a pyro_svi_ext checkpoint"),
    (lambda good: _torch_bytes({"format": "pyro_svi_ext.checkpoint", "version": 99}),
     "format version 99"),
    (lambda good: _torch_bytes({"format": "pyro_svi_ext.checkpoint", "version": 1}),
     "damaged checkpoint"),
    (None, "no checkpoint at"),
], ids=["truncated", "empty", "garbage", "foreign", "newer", "damaged", "missing"])
def test_a_bad_file_is_one_clear_error_naming_it_and_nothing_changes(tmp_path, damage,
                                                                    message):
    good = _written(tmp_path)
    path = tmp_path / "bad.ckpt"
    if damage is not None:
        path.write_bytes(damage(good))
    svi, _ = _svi()
    svi.step(X)
    before = _state()
    with pytest.raises(CheckpointError, match=message) as info:
        svi.load(path)
    assert str(path) in str(info.value) and len(str(info.value).splitlines()) == 1
    assert _same(_state(), before) and svi.step_count == 1


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# --- never half-written -------------------------------------------------------------------------
def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_nothing(tmp_path,
                                                                         monkeypatch):
    path = tmp_path / "keep.ckpt"
    svi, _ = _svi()
    svi.step(X)
    svi.save(path)
    good = path.read_bytes()
    svi.step(X)

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_file.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        svi.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == good and checkpoint_file.read(path)["steps"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.ckpt"]


def test_the_partial_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    partial = tmp_path / f".run.ckpt.{dead}.abc123.partial"
    partial.write_bytes(b"torn")
    svi, _ = _svi()
    svi.step(X)
    svi.save(tmp_path / "run.ckpt")
    assert not partial.exists() and (tmp_path / "run.ckpt").exists()


# --- of another model ----------------------------------------------------------------------
def _checkpoint_of(tmp_path, **kwargs) -> str:
    pyro.clear_param_store()
    svi, _ = _svi(**kwargs)
    svi.step(X)
    svi.save(tmp_path / "other.ckpt")
    pyro.clear_param_store()
    return tmp_path / "other.ckpt"


def test_another_models_checkpoint_is_refused_at_load_when_params_exist(tmp_path):
    path = _checkpoint_of(tmp_path, hidden=6)
    svi, net = _svi()
    svi.step(X)
    before, buffers = _state(), {k: b.clone() for k, b in net.named_buffers()}
    optim_before = {k: v["state"] for k, v in svi.optim.get_state().items()}
    with pytest.raises(CheckpointMismatchError, match=r"encoder\$\$\$0.bias': shape \[8\], "
                       r"float32, real here, shape \[6\], float32, real in the checkpoint"
                       ) as info:
        svi.load(path)
    assert str(path) in str(info.value)
    assert _same(_state(), before) and svi.step_count == 1
    assert _same({k: b for k, b in net.named_buffers()}, buffers)
    after = {k: v["state"] for k, v in svi.optim.get_state().items()}
    assert all(torch.equal(after[k][0]["exp_avg"], optim_before[k][0]["exp_avg"])
               for k in optim_before)


def test_another_models_checkpoint_in_a_fresh_store_is_refused_at_the_first_step(tmp_path):
    path = _checkpoint_of(tmp_path, hidden=6)
    svi, net = _svi()
    weights = {k: p.detach().clone() for k, p in net.named_parameters()}
    rng = torch.get_rng_state()
    svi.load(path)  # nothing to compare with yet
    with pytest.raises(CheckpointMismatchError, match=r"network 'encoder'"):
        svi.step(X)
    # the load is undone: the store, the network, the random state and the counts
    assert len(pyro.get_param_store()) == 0 and svi.step_count == 0 and not svi.losses
    assert _same({k: p.detach() for k, p in net.named_parameters()}, weights)
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_checkpoint_with_another_optimizer_is_refused_naming_both(tmp_path):
    path = _checkpoint_of(tmp_path)
    svi, _ = _svi(optim=pyro.optim.SGD({"lr": 0.1}))
    with pytest.raises(CheckpointMismatchError, match=r"Adam.*SGD"):
        svi.load(path)
    assert len(pyro.get_param_store()) == 0


def test_a_param_the_checkpoint_lacks_is_refused_at_the_first_step(tmp_path):
    path = _checkpoint_of(tmp_path)
    model, guide = checkpoint_worker.build()[1:]

    def model_with_more(x):
        pyro.param("extra", torch.zeros(2))
        model(x)

    svi = ext.SVI(model_with_more, guide, pyro.optim.Adam({"lr": 0.02}), ext.Trace_ELBO())
    svi.load(path)
    with pytest.raises(CheckpointMismatchError, match="'extra'"):
        svi.step(X)
    assert len(pyro.get_param_store()) == 0
