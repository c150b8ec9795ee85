"""A checkpointed fit to kill: a hand-written amortized guide whose network has a
BatchNorm layer (running statistics and a batch count outside the param store),
registered with ``pyro.module``; a model with a constrained param.

``python tests/checkpoint_worker.py RESULT CHECKPOINT STEPS EVERY [options]`` fits with
``checkpoint=CHECKPOINT, checkpoint_every=EVERY`` (resuming when the file exists) and
writes the losses, params, buffers and step count to RESULT. Options:

- ``--compiled``: ``JitTrace_ELBO`` (backend ``eager``: the traced graph replayed) with
  SGD, instead of ``Trace_ELBO`` with Adam;
- ``--die-in-save K``: the K-th save of this process writes half its bytes, then the
  process SIGKILLs itself (a torn write);
- ``--die-in-step K``: the K-th run of the model in this process SIGKILLs it (in the
  middle of a step);
- ``--slow-saves S``: each save sleeps S seconds before its fsync (so that random kills
  land in saves too);
- ``--events FILE``: appends ``ready`` (at the first step), ``step N``, ``save-begin``,
  ``save-end`` lines (unbuffered) so that whoever kills the process knows where it was.
"""

from __future__ import annotations

import argparse
import io
import os
import signal

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
from pyro.distributions import constraints

import pyro_svi_ext as ext
from pyro_svi_ext.infer import checkpoint_file

N, D, Z, H = 16, 4, 2, 8


def data() -> torch.Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(7))


def build(on_model_run=None):
    """``(network, model, guide)``; the network's weights from a fixed seed."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.BatchNorm1d(H), torch.nn.ReLU(),
                              torch.nn.Linear(H, 2 * Z))

    def model(x):
        if on_model_run is not None:
            on_model_run()
        w = pyro.param("w", torch.ones(Z, D) * 0.1)
        scale = pyro.param("scale", torch.tensor(0.5), constraint=constraints.interval(0.1, 2.0))
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([Z]).to_event(1))
            pyro.sample("x", dist.Normal(z @ w, scale).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", net)
        out = net(x)
        with pyro.plate("data", N):
            pyro.sample("z", dist.Normal(out[:, :Z], out[:, Z:].exp()).to_event(1))

    return net, model, guide


def fit(checkpoint, steps: int, every: int, compiled: bool = False, on_model_run=None):
    """Seed 0, then the checkpointed fit; returns ``(svi, network, losses)``."""
    torch.set_num_threads(1)
    pyro.enable_validation(True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net, model, guide = build(on_model_run)
    if compiled:
        svi = ext.SVI(model, guide, pyro.optim.SGD({"lr": 0.01}),
                      ext.JitTrace_ELBO(backend="eager", background_compile=False))
    else:
        svi = ext.SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), ext.Trace_ELBO())
    losses = svi.fit(steps, data(), checkpoint=checkpoint, checkpoint_every=every,
                     progress_bar=False)
    return svi, net, losses


def outcome(svi, net, losses) -> dict:
    return {"losses": list(losses), "steps": svi.step_count, "compiles": svi.compiles,
            "params": {k: v.detach().clone() for k, v in
                       pyro.get_param_store().named_parameters()},
            "buffers": {k: v.clone() for k, v in net.named_buffers()}}


def _events(path):
    if path is None:
        return lambda text: None
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return lambda text: os.write(fd, f"{text}\n".encode())


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("result", "checkpoint"):
        parser.add_argument(name)
    parser.add_argument("steps", type=int)
    parser.add_argument("every", type=int)
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--die-in-save", type=int)
    parser.add_argument("--die-in-step", type=int)
    parser.add_argument("--slow-saves", type=float, default=0.0)
    parser.add_argument("--events")
    opts = parser.parse_args()
    event = _events(opts.events)
    write, fsync, saves, runs = checkpoint_file.write_atomically, os.fsync, [0], [0]

    def save(path, data):
        saves[0] += 1
        event(f"save-begin {saves[0]}")
        write(path, data)
        event(f"save-end {saves[0]}")

    def torn_save(obj, f):
        buffer = io.BytesIO()
        torch.serialization.save(obj, buffer)
        f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def slow_fsync(fd):
        import time

        time.sleep(opts.slow_saves)
        return fsync(fd)

    def on_model_run():
        runs[0] += 1
        if runs[0] == 1:
            event("ready")  # imported, built, resumed: the fit's steps begin
        event(f"step {runs[0]}")
        if runs[0] == opts.die_in_step:
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint_file.write_atomically = save
    if opts.die_in_save is not None:
        original = checkpoint_file.torch.save

        def maybe_torn(obj, f, *args, **kwargs):
            if saves[0] == opts.die_in_save:
                torn_save(obj, f)
            return original(obj, f, *args, **kwargs)

        checkpoint_file.torch.save = maybe_torn
    if opts.slow_saves:
        os.fsync = slow_fsync
    svi, net, losses = fit(opts.checkpoint, opts.steps, opts.every, opts.compiled,
                           on_model_run)
    os.fsync = fsync
    torch.save(outcome(svi, net, losses), opts.result)


if __name__ == "__main__":
    main()
