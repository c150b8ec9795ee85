"""SVI: stochastic variational inference driven by one of the package's ELBOs (or any
ELBO-like object or callable loss), with Pyro optimizers."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence

import pyro
import pyro.optim
import torch
from pyro.poutine.util import is_validation_enabled

from pyro_svi_ext import validation
from pyro_svi_ext.compile.environment import import_dynamo_keeping_the_environment
from pyro_svi_ext.errors import NonFiniteLossError, NonFiniteLossWarning
from pyro_svi_ext.estimators.base import ELBO
from pyro_svi_ext.infer import checkpoint_file
from pyro_svi_ext.infer.checkpoint import Checkpoints
from pyro_svi_ext.infer.fit import Convergence, LossHistory, train
from pyro_svi_ext.infer.optim_step import FusedStep
from pyro_svi_ext.infer.trace_posterior import TracePosterior
from pyro_svi_ext.trace import SiteRecorder, posterior_trace


def _custom_loss_and_grads(loss: Callable) -> Callable:
    def loss_and_grads(model, guide, *args, **kwargs):
        value = loss(model, guide, *args, **kwargs)
        if getattr(value, "requires_grad", False):
            value.backward(retain_graph=True)
        return value

    return loss_and_grads


def _as_float(value) -> float | tuple:
    if isinstance(value, tuple):
        return type(value)(map(_as_float, value))
    return value.item() if torch.is_tensor(value) else float(value)


class SVI(TracePosterior):
    """Stochastic variational inference (``pyro.infer.SVI``'s contract).

    :param model: callable with Pyro primitives.
    :param guide: callable with Pyro primitives (or an autoguide).
    :param optim: a ``pyro.optim.PyroOptim`` (``ValueError`` otherwise).
    :param loss: an ELBO instance (this package's or anything with ``loss`` and
        ``loss_and_grads``), or a callable ``loss(model, guide, *args, **kwargs)``.
    :param loss_and_grads: for a callable ``loss``: its gradient step; by default
        ``loss(...).backward()``.
    :param int num_samples: traces :meth:`run` collects after training.
    :param int num_steps: steps :meth:`run` takes before collecting.
    :param nonfinite: what a step with a non-finite loss does: ``"raise"``
        (:class:`~pyro_svi_ext.errors.NonFiniteLossError`, nothing changed), ``"skip"``
        (no update, a :class:`~pyro_svi_ext.errors.NonFiniteLossWarning`) or ``"stop"``
        (as ``"skip"``, and :meth:`fit` ends). Default: ``"raise"`` under pyro validation,
        ``"skip"`` without (Pyro applies the non-finite update; eager and compiled steps
        behave alike here under every policy). Keyword-only. A loss that is not this
        package's (a callable, or a class of ``pyro.infer`` such as
        ``TraceTailAdaptive_ELBO``, whose loss is ``inf`` by design) gets Pyro's
        behaviour unless ``nonfinite`` is given: its value is returned and the update
        applied.

    :meth:`step` is transactional: if the model, guide or loss raises (including
    :class:`~pyro_svi_ext.errors.NonFiniteLossError` under pyro validation), params
    first created during that step are removed from the param store, and no param
    value or optimizer state is changed.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        optim: pyro.optim.PyroOptim,
        loss,
        loss_and_grads: Callable | None = None,
        num_samples: int = 10,
        num_steps: int = 0,
        *,
        nonfinite: str | None = None,
        **kwargs,
    ):
        if not isinstance(optim, pyro.optim.PyroOptim):
            raise ValueError(
                f"optim must be a pyro.optim.PyroOptim (e.g. pyro.optim.Adam({{'lr': 1e-2}})), "
                f"got {type(optim).__name__}"
            )
        if nonfinite not in (None, "raise", "skip", "stop"):
            raise ValueError(f"nonfinite must be 'raise', 'skip', 'stop' or None, got "
                             f"{nonfinite!r}")
        owner = type(self).__name__
        num_samples = validation.integer(owner, "num_samples", num_samples)
        num_steps = validation.integer(owner, "num_steps", num_steps)
        if loss_and_grads is not None and not callable(loss_and_grads):
            raise validation.ArgumentTypeError(
                f"{owner}: loss_and_grads must be callable or None, got {loss_and_grads!r}")
        super().__init__(**kwargs)
        # the first torch optimizer imports dynamo, which writes os.environ: import it now,
        # with the user's environment kept
        import_dynamo_keeping_the_environment()
        self.nonfinite = nonfinite
        #: why training should end (set by a step under ``nonfinite="stop"``)
        self.stop_reason: str | None = None
        #: the losses of the last :meth:`fit` or :meth:`run`
        self.losses = LossHistory()
        #: steps taken (restored by :meth:`load`)
        self.step_count = 0
        self._checkpoints = Checkpoints(self)
        self.loss_fn = loss
        self.model = model
        self.guide = guide
        self.optim = optim
        self.num_samples = num_samples
        self.num_steps = num_steps
        self._optim_step = FusedStep(optim)
        # this package's estimators give their stepper (eager, or a compiled step that may
        # include the optimizer's update); a subclass that overrides the public
        # loss_and_grads gets that method called instead, as in Pyro
        self._stepper = (loss.stepper(model, guide)
                         if isinstance(loss, ELBO)
                         and type(loss).loss_and_grads is ELBO.loss_and_grads else None)
        if hasattr(loss, "loss") and hasattr(loss, "loss_and_grads"):
            self.loss = loss.loss
            self.loss_and_grads = loss.loss_and_grads
        elif callable(loss):
            self.loss = loss
            self.loss_and_grads = loss_and_grads or _custom_loss_and_grads(loss)
        else:
            raise ValueError(
                f"loss must be an ELBO or a callable loss(model, guide, ...), got {loss!r}"
            )

    def _run_loss_and_grads(self, args: tuple, kwargs: dict):
        if self._stepper is not None:
            result = self._stepper.loss_and_params(args, kwargs)
            return result.loss, result.params
        recorder = SiteRecorder(params_only=True)
        with recorder:
            loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        return loss, recorder.params

    def step(self, *args, **kwargs) -> float:
        """One gradient step; returns the loss estimate (float) before the step. A
        non-finite loss follows the ``nonfinite`` policy (see the class)."""
        return self._counted_step(args, kwargs, whole=self._stepper is not None)

    def _counted_step(self, args: tuple, kwargs: dict, whole: bool) -> float:
        """:meth:`_step`, counted in ``step_count``; under the checkpoints' watcher when
        the param store changed since its last look (networks registered with
        ``pyro.module`` are seen there) or a loaded checkpoint waits for a step."""
        checkpoints = self._checkpoints
        if checkpoints.watching():
            value = checkpoints.watched(self._step, args, kwargs, whole)
        else:
            value = self._step(args, kwargs, whole)
        self.step_count += 1
        return value

    def _step(self, args: tuple, kwargs: dict, whole: bool) -> float:
        if self.nonfinite is None and not isinstance(self.loss_fn, ELBO):
            return self._eager_step(args, kwargs, always_update=True)  # as Pyro's SVI
        policy = self.nonfinite or ("raise" if is_validation_enabled() else "skip")
        try:
            if policy == "raise":
                value = self._loss_and_update(args, kwargs, whole)
            else:
                with warnings.catch_warnings():  # the policy says it once, below
                    warnings.simplefilter("ignore", NonFiniteLossWarning)
                    value = self._loss_and_update(args, kwargs, whole)
        except NonFiniteLossError as err:
            if policy == "raise":
                raise
            value = err.loss
        if isinstance(value, tuple) or math.isfinite(value):
            return value
        if policy == "raise":  # without validation nothing raised yet; nothing changed
            raise NonFiniteLossError(value, [])
        warnings.warn(f"SVI: non-finite loss {value}: the step changed nothing"
                      + ("; training stops" if policy == "stop" else ""),
                      NonFiniteLossWarning, stacklevel=2)
        if policy == "stop":
            self.stop_reason = f"non-finite loss {value}"
        return value

    def _loss_and_update(self, args: tuple, kwargs: dict, whole: bool) -> float | tuple:
        value = self._stepper.whole_step(self.optim, args, kwargs) if whole else None
        return self._eager_step(args, kwargs) if value is None else value

    def _eager_step(self, args: tuple, kwargs: dict, always_update: bool = False) -> float:
        """Loss and gradients (eager or a compiled graph), then the optimizer's step
        (none when the loss is not finite, unless ``always_update``)."""
        store = pyro.get_param_store()
        names_before = set(store.keys())
        try:
            loss, params = self._run_loss_and_grads(args, kwargs)
            # one update per tensor, also when a tensor has two param-store names (one
            # network registered by pyro.module under two names), as in Pyro
            tensors = list({id(p): p for p in params.values()}.values())
            value = self._combine(_as_float(loss), params)
        except BaseException:
            for name in set(store.keys()) - names_before:
                del store[name]
            raise
        try:
            if always_update or isinstance(value, tuple) or math.isfinite(value):
                self._optim_step(tensors)
            updated = getattr(self._stepper, "after_update", None)
            if updated is not None:  # a compiled step's sentinel compares its graph now
                updated()
        finally:
            grads = [p.grad for p in tensors if p.grad is not None]
            if grads:
                torch._foreach_zero_(grads)
        return value

    def _combine(self, loss: float | tuple, params: dict[str, torch.Tensor]) -> float | tuple:
        """Between the gradients and the update: what a subclass does with them (a
        data-parallel SVI averages them over processes); returns the step's loss. Here:
        nothing. A subclass that raises leaves no gradient behind."""
        return loss

    @property
    def compiles(self) -> int:
        """How many step graphs the estimator has traced and compiled for this SVI's
        model and guide (0 for an eager estimator): a number above the count of input
        shapes you feed means a recompile per call somewhere."""
        return getattr(self._stepper, "compiles", 0)

    def compile_report(self):
        """What the compiled step of this SVI did: graphs compiled (backend, seconds, in
        the background or not), swaps, recompiles and why, the sentinel's checks and
        mismatches, a fallback to eager with the line of code that caused it (a
        :class:`~pyro_svi_ext.compile.report.CompileReport`; ``str()`` reads as text,
        ``as_dict()`` as data). None for an eager estimator."""
        return getattr(self._stepper, "report", None)

    def wait_for_compiles(self, timeout: float | None = None) -> bool:
        """Block until graphs compiling in the background are ready (they are used from
        the next step); whether they all ended within ``timeout`` seconds. True at once
        for an eager estimator."""
        wait = getattr(self._stepper, "wait_for_compiles", None)
        return True if wait is None else wait(timeout)

    def step_tensor(self, *args, **kwargs) -> torch.Tensor:
        """Like :meth:`step`, but the loss comes back as a 0-dim tensor. When the
        estimator compiles the whole step (``Jit*`` estimators with a supported
        optimizer), the loss is not read on the host, so a CUDA step is queued without
        waiting for the device; the non-finite check is then yours (a step whose loss
        is not finite changes no param or optimizer tensor). Otherwise this is
        ``torch.tensor(step(...))``."""
        if self._stepper is not None and not self._checkpoints.watching():
            value = self._stepper.whole_step(self.optim, args, kwargs, lazy=True)
            if value is not None:
                self.step_count += 1
                return value
        return torch.tensor(self._counted_step(args, kwargs, whole=False))

    def evaluate_loss(self, *args, **kwargs) -> float:
        """The loss estimate without gradients (float)."""
        with torch.no_grad():
            return _as_float(self.loss(self.model, self.guide, *args, **kwargs))

    def fit(self, num_steps: int, *args, progress_bar: bool | None = None,
            callbacks: Sequence[Callable] = (), convergence: Convergence | None = None,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 100,
            **kwargs) -> LossHistory:
        """Take up to ``num_steps`` steps with ``(*args, **kwargs)``; returns the losses
        (a :class:`~pyro_svi_ext.infer.fit.LossHistory`, also kept as ``svi.losses``).

        :param progress_bar: a tqdm bar with the running loss (the mean of the last 100
            losses); default: on when stderr is a terminal.
        :param callbacks: ``callback(svi, step, loss)`` after each step; one that returns
            True ends training.
        :param convergence: a :class:`~pyro_svi_ext.infer.fit.Convergence` (relative
            change of the windowed mean loss) that ends training once reached.
        :param checkpoint: a file to :meth:`save` to every ``checkpoint_every`` steps and
            when the fit ends. If it exists, the fit first resumes from it (one ``INFO``
            log record of ``pyro_svi_ext.infer.fit`` says so): ``num_steps`` stays the
            total, and the losses returned include the restored ones (so ``convergence``
            sees the whole run); a run that had ended (converged, stopped) returns at once.

        ``ValueError`` for a negative or non-integer ``num_steps``. Training also ends
        on a non-finite loss under ``nonfinite="stop"``; ``losses.stop_reason`` says why
        it ended early."""
        self.stop_reason = None
        self.losses = train(self, num_steps, args, kwargs, progress_bar, callbacks,
                            convergence, checkpoint, checkpoint_every)
        return self.losses

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint of this SVI to ``path`` (see
        :mod:`pyro_svi_ext.infer.checkpoint`: params, networks' buffers, optimizer
        state, step count, random states, loss history, ...). Written to a temporary
        file in the same directory, fsynced, then renamed over ``path``: a kill leaves
        the previous checkpoint or the new one."""
        checkpoint_file.write_atomically(path, self._checkpoints.capture())

    def load(self, path: str | os.PathLike, map_location=None) -> None:
        """Resume from the checkpoint at ``path`` (written by :meth:`save`): the next
        step is the one the saved run would have taken next, bit for bit.

        Read with ``torch.load(weights_only=True)`` (never runs code from the file);
        tensors go to the device they were saved on, or where ``map_location`` puts
        them (CUDA random states are then not restored).
        :class:`~pyro_svi_ext.errors.CheckpointError` (naming the path) for a missing,
        corrupt or foreign file, :class:`~pyro_svi_ext.errors.CheckpointMismatchError`
        for a checkpoint of another model (the first difference named); either way
        nothing changed. Into an empty param store, the next step binds the networks
        and checks the params the model asks for (see the module)."""
        data = checkpoint_file.read(path, map_location)
        self._checkpoints.load(data, str(path), map_location=map_location)

    def run(self, *args, **kwargs) -> SVI:
        """Take ``num_steps`` steps (a progress bar on a terminal; losses kept in
        ``svi.losses``), then collect ``num_samples`` posterior traces."""
        if self.num_steps:
            self.fit(self.num_steps, *args, **kwargs)
        return super().run(*args, **kwargs)

    def _traces(self, *args, **kwargs) -> Iterator:
        for _ in range(self.num_samples):
            yield posterior_trace(self.model, self.guide, args, kwargs), 0.0
