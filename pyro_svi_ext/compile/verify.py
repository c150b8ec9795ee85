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

#: check every simplified graph against the graph it came from (the test suite turns
#: this on: the passes are checked on every graph it traces)
CHECK_PASSES = [False]


class GraphPassError(AssertionError):
    """The graph passes changed what a traced graph computes (a bug of theirs)."""


def check_simplified(before: torch.fx.GraphModule, after: torch.fx.GraphModule,
                     inputs: list) -> None:
    """``after`` (the simplified graph) computes what ``before`` does on ``inputs``, from
    the same random state: :class:`GraphPassError` otherwise."""
    with torch.no_grad(), torch.random.fork_rng():
        state = torch.get_rng_state()
        want = before(*inputs)
        torch.set_rng_state(state)
        got = after(*inputs)
    if not all_close(list(want), list(got)):
        raise GraphPassError("the graph passes changed what the traced graph computes")


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


#: a gradient element this small against the step's largest gradient is rounding noise
NOISE = 1e-5


def update_close(want: torch.Tensor, got: torch.Tensor, grad: torch.Tensor,
                 grad_scale: float) -> bool:
    """A param's new value after an optimizer's update: :func:`all_close` where the
    traced step's gradient ``grad`` is above rounding noise (``NOISE`` times
    ``grad_scale``, the step's largest gradient), finite elsewhere. Adam divides a
    gradient by its own root mean square, so a gradient that is rounding noise (the
    bias of a layer before BatchNorm, whose exact gradient is 0) makes a step of any
    size up to the learning rate and either sign: two correct compilations of one step
    differ there by up to two steps (measured: 0.0123 at lr 0.01). The optimizer's
    state, its averages of the gradient, is still compared by :func:`all_close`."""
    if all_close([want], [got]):
        return True
    noise = grad.detach().abs() <= NOISE * grad_scale
    want, got = want.detach(), got.detach().to(want.dtype)
    if not bool((got.isfinite() | ~want.isfinite()).all()):
        return False
    return all_close([want[~noise]], [got[~noise]])


def outputs_close(layout: StepLayout, reference, want: list, got: list) -> bool:
    """``got`` (kept outputs, then new values of ``layout.written_inputs``) against
    ``want``: :func:`all_close`, with :func:`update_close` for the params a whole SVI
    step updates (``reference``: the traced graph's outputs, gradients included)."""
    n = layout.kept + (layout.n_params if layout.whole_step else 0)
    if not all_close(want[:layout.kept], got[:layout.kept]) or not all_close(
            want[n:], got[n:]):
        return False
    grads = list(reference[1:1 + layout.n_params])
    scale = max((float(g.detach().abs().max()) for g in grads if g.numel()), default=0.0)
    return all(update_close(w, g, grad, scale) for w, g, grad in zip(
        want[layout.kept:n], got[layout.kept:n], grads, strict=False))


def compile_checked(backends: list[Backend], production: torch.fx.GraphModule,
                    inputs: list, layout: StepLayout, reference, devices: list,
                    jit_options: dict | None, notify: Callable[[str], None],
                    failed: dict | None = None, rng_state: tuple | None = None,
                    quiet: bool = False, rng_after: tuple | None = None) -> Callable:
    """The first backend's compiled ``production`` graph whose outputs (and in-place
    writes, done on copies) match ``reference``, the traced graph's outputs on the same
    draws, and its name. Failing backends are removed from ``backends`` (while another
    is left) and named, each with its reason, in one ``notify`` call;
    :class:`Untraceable` when none is left.

    ``failed``: ``{backend name: exception}`` for backends that failed elsewhere (a
    compile child process): counted as failing without compiling again. ``rng_state``: ``(cpu state,
    [cuda states])`` the reference drew from, when the generators have moved on since.
    ``quiet``: no :class:`LegacyBackendWarning` (an interim graph, not the user's choice).
    ``rng_after``: the generators' states the reference left (same layout as
    ``rng_state``): a compiled graph must leave them there too (a backend that drops a
    draw nothing reads passes the value check and moves every later draw)."""
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
                    left = (torch.get_rng_state(),
                            [torch.cuda.get_rng_state(d) for d in devices])
            got = [*compiled[:layout.kept], *[copies[id(t)] for t in targets]]
            want = [*reference[:layout.kept], *reference[len(reference) - n_new:]]
            if not outputs_close(layout, reference, want, got):
                raise ArithmeticError("its results differ from the traced graph's")
            if rng_after is not None and not (torch.equal(left[0], rng_after[0]) and all(
                    torch.equal(a, b) for a, b in zip(left[1], rng_after[1], strict=True))):
                raise ArithmeticError("it leaves the random generator elsewhere than the "
                                      "traced graph (a draw dropped or added)")
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
