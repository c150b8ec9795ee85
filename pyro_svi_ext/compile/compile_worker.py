"""The child process of :mod:`.background`: ``python -m
pyro_svi_ext.compile.compile_worker GRAPH.pkl`` compiles a pickled step graph with a
backend, which leaves the result in that backend's on-disk cache (inductor's FX graph
cache), and exits 0; else prints the error and exits 1.

``PYRO_SVI_EXT_COMPILE_GATE``: a file the child waits for before compiling (for tests
that need a compile to be still running).

The child ends when its parent does: a training process that is killed, or leaves by
``os._exit``, runs no exit handler to stop it, and an inductor compile of a long
chain runs for minutes on a core nobody is waiting for. The child leads its own
process group, and takes the group (the C++ compilers inductor starts) with it."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
import warnings
from pathlib import Path


def _example(description: tuple):
    """An input like the one described (:func:`.background.describe_inputs`); tensors'
    values do not matter to a compile."""
    import torch

    if description[0] == "value":
        return description[1]
    _, shape, stride, dtype, device, requires_grad = description
    return torch.empty_strided(shape, stride, dtype=getattr(torch, dtype), device=device,
                               requires_grad=requires_grad)


def _exit_with_parent(every: float = 0.5) -> None:
    """Leave (status 3) once this process's parent is no longer the one that started
    it (``PYRO_SVI_EXT_PARENT_PID``: it may end before this line runs; orphans are
    handed to another process)."""
    parent = int(os.environ.get("PYRO_SVI_EXT_PARENT_PID") or os.getppid())

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        if hasattr(os, "killpg") and os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)  # its compilers too, and itself
        os._exit(3)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main(path: str) -> int:
    _exit_with_parent()
    import torch

    from pyro_svi_ext.compile.backends import get_backend
    from pyro_svi_ext.compile.background import load_portable, mark_cached

    if hasattr(os, "nice"):  # the training step comes first where both want a core
        os.nice(10)
    gate = os.environ.get("PYRO_SVI_EXT_COMPILE_GATE")
    while gate and not os.path.exists(gate):
        time.sleep(0.05)
    with open(path, "rb") as f:
        payload = pickle.load(f)
    torch.set_num_threads(payload["threads"])
    inputs = [_example(description) for description in payload["inputs"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = load_portable(payload["graph"])
        get_backend(payload["backend"]).compile(graph, inputs)
    if payload.get("marker"):  # the next run with this graph may compile in place
        mark_cached(Path(payload["marker"]))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1]))
    except Exception as err:  # reported by the parent as the compile's failure
        print(f"{type(err).__name__}: {err}".splitlines()[0], file=sys.stderr)
        sys.exit(1)
