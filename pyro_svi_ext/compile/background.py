"""Compiling a traced step graph on a background thread, so that training never waits
for the compiler: the eager step keeps running until the compiled graph is ready, then
the step checks it and swaps it in (:mod:`.step`).

Only the backend's compile runs on the thread. Tracing (which runs the model under
Pyro's global handler stack), the reference run, the verification run (which draws from
torch's global generator) and any warning-filter changes stay on the caller's thread.

A thread, not a process: inductor's code generation holds the GIL for part of the
compile, but its C++ compiles run in subprocesses, and a process would have to ship
the graph and load the compiled module back. Measured (2 cores, torch 2.13, eager BLR
step while the HMM T=100 graph compiles): see ``benchmarks/bench_time_to_fit.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: a compile thread's stack: inductor's memory planner recurses about once per 10 graph
#: nodes (the limit is lifted while compiling, see backends._recursion_limit_for)
STACK_BYTES = 256 * 1024 * 1024
_stack_lock = threading.Lock()


class BackgroundCompile:
    """``compile(graph, inputs)`` running on a daemon thread (a process exiting does not
    wait for it). :meth:`done` polls; :meth:`outcome` is ``(callable, None)`` or
    ``(None, exception)`` once done."""

    def __init__(self, compile: Callable, graph, inputs: list, name: str) -> None:
        self.name = name
        self.started = time.perf_counter()
        self.seconds: float | None = None
        self._result = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        with _stack_lock:
            before = threading.stack_size()
            threading.stack_size(STACK_BYTES)
            try:
                self._thread = threading.Thread(
                    target=self._work, args=(compile, graph, inputs),
                    name=f"pyro_svi_ext-compile-{name}", daemon=True)
                self._thread.start()
            finally:
                threading.stack_size(before)

    def _work(self, compile: Callable, graph, inputs: list) -> None:
        try:
            self._result = compile(graph, inputs)
        except BaseException as err:  # kept, and reported by the step on its thread
            self._error = err
        finally:
            self.seconds = time.perf_counter() - self.started
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the compile ends (or ``timeout`` seconds); whether it ended."""
        return self._done.wait(timeout)

    def outcome(self) -> tuple:
        assert self.done(), "the compile has not finished"
        return self._result, self._error
