"""A new graph is used only once it is shown right: the backend's compiled graph must
reproduce the traced graph's outputs on the same random draws (else the next backend
is tried), and the traced graph the eager step's (checked by the step)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from pyro_svi_ext.compile.backends import Backend, LegacyBackendWarning
from pyro_svi_ext.compile.layout import StepLayout
from pyro_svi_ext.compile.tracing import Untraceable


def all_close(want: list, got: list) -> bool:
    """Equal up to float rounding: ``|got - want| <= 1e-4 |want| + 1e-5 + 1e-4 max|want|``
    per tensor (sums over 1e5 terms round differently in a fused kernel; a structural
    mistake is off by far more)."""
    if len(want) != len(got):
        return False
    for w, g in zip(want, got, strict=True):
        w, g = w.detach(), g.detach().to(w.dtype)
        scale = float(w.abs().max()) if w.numel() and bool(w.isfinite().all()) else 0.0
        if not torch.allclose(g, w, rtol=1e-4, atol=1e-5 + 1e-4 * scale, equal_nan=True):
            return False
    return True


def compile_checked(backends: list[Backend], production: torch.fx.GraphModule,
                    inputs: list, layout: StepLayout, reference, devices: list,
                    jit_options: dict | None, notify: Callable[[str], None],
                    failed: dict | None = None, rng_state: tuple | None = None,
                    quiet: bool = False) -> Callable:
    """The first backend's compiled ``production`` graph whose outputs (and in-place
    writes, done on copies) match ``reference``, the traced graph's outputs on the same
    draws, and its name. Failing backends are removed from ``backends`` (while another
    is left) and named, each with its reason, in one ``notify`` call;
    :class:`Untraceable` when none is left.

    ``failed``: ``{backend name: exception}`` for backends that failed elsewhere (a
    compile child process): counted as failing without compiling again. ``rng_state``: ``(cpu state,
    [cuda states])`` the reference drew from, when the generators have moved on since.
    ``quiet``: no :class:`LegacyBackendWarning` (an interim graph, not the user's choice)."""
    targets = [inputs[i] for i in layout.written_inputs]
    n_new = len(targets)
    failures = []
    for backend in list(backends):
        copies = {id(t): t.clone() for t in targets}
        try:
            options = ({"jit_options": jit_options}
                       if backend.name == "jit" and jit_options else {})
            # a compiler's internal warnings (deprecations inside torch) are not the
            # user's: under -W error they would make every backend fail
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if not quiet:
                    warnings.simplefilter("default", LegacyBackendWarning)  # ours, once
                if failed and backend.name in failed:
                    raise failed[backend.name]
                run = backend.compile(production, inputs, **options)
                with torch.no_grad(), torch.random.fork_rng(devices=devices):
                    if rng_state is not None:
                        torch.set_rng_state(rng_state[0])
                        for d, state in zip(devices, rng_state[1], strict=True):
                            torch.cuda.set_rng_state(state, d)
                    compiled = run(*[copies.get(id(t), t) for t in inputs])
            got = [*compiled[:layout.kept], *[copies[id(t)] for t in targets]]
            want = [*reference[:layout.kept], *reference[len(reference) - n_new:]]
            if not all_close(want, got):
                raise ArithmeticError("its results differ from the traced graph's")
        except Exception as err:
            failures.append(f"{backend.name}: {type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}")
            if len(backends) > 1:
                backends.remove(backend)
                continue
            raise Untraceable("compile backends failed: " + "; ".join(failures)) from err
        if failures:
            notify(f"compile backends failed: {'; '.join(failures)}; using {backend.name!r}")
        return run, backend.name
    raise Untraceable("no compile backend: " + "; ".join(failures))  # pragma: no cover
