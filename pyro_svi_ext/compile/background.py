"""Compiling a traced step graph in a child process, so that training never waits for
the compiler: an interim graph or the eager step keeps running until the child has
compiled the graph into inductor's on-disk cache; the step then compiles it again from
that cache (about 1.5 s instead of 8 s or a minute), checks it and swaps it in
(:mod:`.step`).

A process, not a thread. Measured on 2 cores (torch 2.13, BLR N=1000, one torch thread,
2,000 steps, ``benchmarks/bench_time_to_fit.py``): with the compile on a thread, the
compiler's Python (code generation, ~1.3 s of imports) and the eager steps take turns
at the GIL, each at about half speed: 5.9 s to 2,000 steps from a cold cache and 5.8 s
from a warm one (the compile never finished), against 3.0 s eager. In a child process
the compile runs on the other core (figures: the README's "No compile wall").

Only the compile runs in the child. Tracing (which runs the model under Pyro's global
handler stack), the reference run and the verification run (which draw from torch's
global generator) stay in the step's process and thread.
"""

from __future__ import annotations

import atexit
import gc
import getpass
import hashlib
import importlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch

from pyro_svi_ext.compile.graph_passes import tensor_bytes

#: the jobs whose child is running (weak: a job nobody holds is collected, and stops
#: its child)
_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_children() -> None:
    """A process that ends does not leave compiles running behind it."""
    for job in list(_LIVE):
        job.cancel()


def end_group(leader: int) -> None:
    """Kill the process group ``leader`` leads (a compile child and its compilers); a
    group already gone is fine. A measured leak without it: a child killed while
    inductor compiled left its ``cc1plus``, reparented to PID 1, on 82% of a core for
    6.5 more minutes."""
    if not hasattr(os, "killpg"):
        return
    try:
        os.killpg(leader, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def describe_inputs(inputs: list) -> list:
    """Tensors as ``("tensor", shape, stride, dtype, device, requires_grad)``; other
    values as ``("value", value)``."""
    return [("tensor", tuple(t.shape), tuple(t.stride()), str(t.dtype).split(".")[-1],
             str(t.device), t.requires_grad) if torch.is_tensor(t) else ("value", t)
            for t in inputs]


def portable(graph: torch.fx.GraphModule) -> dict:
    """``graph`` as plain data a child process can load: its nodes (ops by their schema
    name, no metadata) and the tensors it reads (``get_attr``). :func:`load_portable`
    builds the graph module again; the parent compiles that very module too, so both
    processes compile the same graph and the child's cache entry is the parent's.

    Not ``pickle`` of the ``GraphModule``: loading one traces its code again, which runs
    factory calls (``aten.empty`` then ``aten.normal_``) once and keeps their result as
    a constant, so every step would reuse one random draw."""
    nodes = [(n.op, n.name, _encode_target(n.target), _encode(n.args), _encode(n.kwargs))
             for n in graph.graph.nodes]
    tensors = {n.target: getattr(graph, n.target) for n in graph.graph.nodes
               if n.op == "get_attr"}
    return {"nodes": nodes, "tensors": tensors}


def load_portable(data: dict) -> torch.fx.GraphModule:
    """The graph module of :func:`portable`'s data."""
    graph = torch.fx.Graph()
    made: dict[str, torch.fx.Node] = {}
    for op, name, target, args, kwargs in data["nodes"]:
        made[name] = graph.create_node(op, _decode_target(target), _decode(args, made),
                                       _decode(kwargs, made), name=name)
    root = torch.nn.Module()
    for name, value in data["tensors"].items():
        setattr(root, name, value)
    return torch.fx.GraphModule(root, graph)


def _encode_target(target):
    if isinstance(target, torch._ops.OpOverload):
        name, _, overload = target.name().partition(".")  # "aten::empty.memory_format"
        return ("op", name, overload)
    if isinstance(target, str):
        return target
    module, name = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if module and name and "<" not in name and _find(module, name) is target:
        return ("py", module, name)  # e.g. operator.getitem
    raise TypeError(f"cannot send a graph calling {target!r} to a compile process")


def _find(module: str, qualname: str):
    value = importlib.import_module(module)
    for part in qualname.split("."):
        value = getattr(value, part, None)
    return value


def _decode_target(target):
    if isinstance(target, tuple) and target[0] == "op":
        namespace, name = target[1].split("::")
        return getattr(getattr(getattr(torch.ops, namespace), name), target[2] or "default")
    if isinstance(target, tuple):
        return _find(target[1], target[2])
    return target


def _encode(value):
    if isinstance(value, torch.fx.Node):
        return ("__node__", value.name)
    if isinstance(value, (list, tuple)):
        return type(value)(_encode(v) for v in value)
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value, made: dict):
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__node__":
        return made[value[1]]
    if isinstance(value, (list, tuple)):
        return type(value)(_decode(v, made) for v in value)
    if isinstance(value, dict):
        return {k: _decode(v, made) for k, v in value.items()}
    return value


def inductor_cache_dir() -> Path:
    """Where inductor keeps its on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, else its
    per-user default), found without writing it into ``os.environ`` (torch's own
    ``cache_dir()`` does: every subprocess of the user's would inherit it)."""
    configured = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if configured:
        return Path(os.path.abspath(configured))
    from pyro_svi_ext.compile.environment import environment_kept

    with environment_kept():  # importing torch._inductor imports dynamo, which writes it
        try:
            from torch._inductor.runtime.cache_dir_utils import default_cache_dir

            return Path(default_cache_dir())
        except ImportError:  # pragma: no cover - other torch layouts
            return Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"


def cache_marker(backend: str, data: dict, inputs: list) -> Path:
    """A file that says a child process compiled this graph into the cache before (this
    package's own record beside inductor's cache: inductor can only tell a hit by doing
    most of a compile). Keyed by the graph, its tensors, the inputs' layout, the thread
    count and the torch version."""
    digest = hashlib.sha256(pickle.dumps(
        (backend, data["nodes"], describe_inputs(inputs), torch.get_num_threads(),
         torch.__version__)))
    for name, value in sorted(data["tensors"].items()):  # (a pickled tensor's bytes vary)
        digest.update(name.encode())
        if torch.is_tensor(value):
            digest.update(repr((value.shape, value.dtype)).encode())
            digest.update(tensor_bytes(value))
        else:
            digest.update(repr(value).encode())
    return inductor_cache_dir() / "pyro_svi_ext" / digest.hexdigest()


def mark_cached(marker: Path) -> None:
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # a read-only cache: later runs compile in the background again
        pass


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


#: compile children running at once in one process. Measured: Pyro's
#: tests/infer/test_valid_models.py under ``--pyro-svi-ext-compile`` (one step object
#: per test, each starting a child) had 91 children alive and 24 GB in use when the
#: kernel killed the run; each child holds 200-500 MB while inductor works.
MAX_CHILDREN = max(1, min(4, _cores() - 1))


class _ThreadLease:
    """While compile children run and the step's torch threads would leave no core
    for them, the step runs with one thread fewer; the count is put back when the last
    child ends (unless the user changed it meanwhile). Measured on 2 cores at torch's
    default of 2 threads, cold cache, 2,000 steps, with and without the lease in one
    run: OpenMP's threads wait actively, so a child at nice 10 still slowed every step
    without it; the amortized MLP took 2.8-3.0 s with it against 4.7 s without, the
    non-reparameterized TraceGraph model 3.0-3.1 s against 5.2 s."""

    def __init__(self) -> None:
        self.children = 0
        self.saved: int | None = None
        self.lent: int | None = None

    def take(self) -> None:
        self.children += 1
        threads = torch.get_num_threads()
        if self.children == 1 and threads > 1 and threads >= _cores():
            self.saved, self.lent = threads, max(1, _cores() - 1)
            torch.set_num_threads(self.lent)

    def give_back(self) -> None:
        self.children -= 1
        if self.children == 0 and self.saved is not None:
            if torch.get_num_threads() == self.lent:
                torch.set_num_threads(self.saved)
            self.saved = self.lent = None


THREADS = _ThreadLease()


@contextmanager
def threads_as(count: int):
    """Torch's thread count is ``count`` inside (the count a child compiled for, so
    compiling the same graph here is a cache hit), and what it was before after."""
    before = torch.get_num_threads()
    if before != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class BackgroundCompile:
    """``backend``'s compile of ``graph`` (:func:`portable`) for inputs like ``inputs``,
    in a child process
    (``python -m pyro_svi_ext.compile.compile_worker``) that fills the on-disk cache.
    :meth:`done` polls; :meth:`outcome` is ``None`` or the child's error line.

    At most :data:`MAX_CHILDREN` children run at once in a process; a job beyond that
    waits (its step keeps running interim or eager) and starts when one ends. A job
    nobody holds any more (its step object was collected) stops its child."""

    def __init__(self, backend: str, graph: dict, inputs: list,
                 marker: Path | None = None) -> None:
        self.name = backend
        self._proc = None
        self.threads = torch.get_num_threads()  # the compiled code's thread count
        self.started: float | None = None
        self.seconds: float | None = None
        # a plain directory removed by __del__ (a TemporaryDirectory collected in the
        # same garbage cycle as its job warns of an implicit cleanup, an error under
        # filterwarnings=error)
        self._dir = Path(tempfile.mkdtemp(prefix="pyro_svi_ext-compile-"))
        self._payload = self._dir / "graph.pkl"
        with open(self._payload, "wb") as f:
            # the thread count is part of the generated code, so of the cache key
            pickle.dump({"backend": backend, "graph": graph, "threads": self.threads,
                         "inputs": describe_inputs(inputs),
                         "marker": None if marker is None else str(marker)}, f)
        self._log = self._dir / "stderr.txt"  # the child's stderr
        self._counted = False  # holds a slot and a thread lease
        if len(_LIVE) >= MAX_CHILDREN:
            gc.collect()  # the children of step objects nobody holds stop with them
        self._start_if_free()

    def _start_if_free(self) -> bool:
        """Start the child if fewer than :data:`MAX_CHILDREN` run; whether it runs.
        (Polled on every step while the job waits: no more than a length check.)"""
        if self._proc is not None:
            return True
        if len(_LIVE) >= MAX_CHILDREN:
            return False
        # one compile thread: the other core is the training step's
        # and the cache this process reads (given to the child's copy of the environment)
        env = dict(os.environ, PYTHONWARNINGS="ignore", TORCHINDUCTOR_COMPILE_THREADS="1",
                   PYRO_SVI_EXT_PARENT_PID=str(os.getpid()),
                   TORCHINDUCTOR_CACHE_DIR=str(inductor_cache_dir()))
        with open(self._log, "wb") as err:  # the child has its own copy of the handle
            # its own process group: the compilers it starts (cc1plus) end with it
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "pyro_svi_ext.compile.compile_worker",
                 str(self._payload)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
                start_new_session=hasattr(os, "killpg"))
        self.started = time.perf_counter()
        _LIVE.add(self)
        self._counted = True
        THREADS.take()
        return True

    def done(self) -> bool:
        if not self._start_if_free() or self._proc.poll() is None:
            return False
        self._finish()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the child ends (or ``timeout`` seconds); whether it ended. A job
        waiting for a free slot waits for it first."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while not self._start_if_free():
            if deadline is not None and time.perf_counter() >= deadline:
                return False
            time.sleep(0.05)
        try:
            self._proc.wait(None if deadline is None
                            else max(0.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            return False
        self._finish()
        return True

    def _finish(self) -> None:
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.started
            self._release()

    def _release(self) -> None:
        _LIVE.discard(self)
        if self._counted:  # (a collected job is out of _LIVE already)
            self._counted = False
            THREADS.give_back()

    def outcome(self) -> str | None:
        """None when the child compiled the graph; else the last line it printed."""
        assert self.done(), "the compile has not finished"
        if self._proc.returncode == 0:
            return None
        lines = self._log.read_bytes().decode(errors="replace").strip().splitlines()
        return (lines[-1] if lines else f"exit status {self._proc.returncode}")[:300]

    def cancel(self) -> None:
        """End the child and every process it started (its process group)."""
        if self._proc is not None and self._proc.poll() is None:
            end_group(self._proc.pid)
            self._proc.kill()
            self._proc.wait()
        self._release()

    def __del__(self) -> None:
        try:
            self.cancel()
            if hasattr(self, "_dir"):
                shutil.rmtree(self._dir, ignore_errors=True)
        except Exception:  # interpreter shutdown: nothing left to tell
            pass
