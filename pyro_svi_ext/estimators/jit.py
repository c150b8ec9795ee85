"""The ``Jit*`` estimators: each estimator with its SVI step compiled (see
:mod:`pyro_svi_ext.compile`), made by one helper, :func:`compiled_variant`."""

from __future__ import annotations

import inspect

from pyro_svi_ext import validation
from pyro_svi_ext.compile import CompiledStep
from pyro_svi_ext.compile.environment import import_dynamo_keeping_the_environment
from pyro_svi_ext.estimators.renyi_elbo import RenyiELBO
from pyro_svi_ext.estimators.trace_elbo import Trace_ELBO
from pyro_svi_ext.estimators.traceenum_elbo import TraceEnum_ELBO
from pyro_svi_ext.estimators.tracegraph_elbo import TraceGraph_ELBO

DEFAULT_BACKEND = "auto"
#: the compile options every ``Jit*`` estimator adds, keyword-only, to its base's
COMPILE_OPTIONS = {"backend": None, "on_change": "recompile", "on_dynamic": "eager",
                   "cache_size": 8, "background_compile": True}

_DOC = """:class:`{base}` with its SVI step compiled after a first eager step.

    Restrictions, as Pyro documents them for its Jit* estimators: static model
    structure; tensor inputs through ``*args``; non-tensor inputs through ``**kwargs``
    (part of the compiled graph's key). With a supported optimizer (``Adam``, ``AdamW``,
    ``SGD``, ``ClippedAdam``) the whole step is one graph (loss, gradients, update, and
    side state such as TraceGraph's decaying-average baselines); with another, the loss
    and gradients are, and the update runs eagerly. A change of param or argument
    shapes, dtypes or devices recompiles (up to ``cache_size`` graphs) or raises
    :class:`~pyro_svi_ext.compile.StructureChangedError` (``on_change="raise"``). A model
    that cannot be traced (e.g. it branches on tensor values) runs eagerly with one
    ``RuntimeWarning`` (a log record with ``ignore_jit_warnings=True``), or raises with
    ``on_dynamic="raise"``. Validation (pyro's checks) runs on the first, eager call
    only; a non-finite loss is still caught.

    :param backend: ``"auto"`` (default: the first of ``"inductor"``, ``"jit"`` and
        ``"eager"`` that compiles the step and reproduces the traced graph's numbers;
        a backend that fails is dropped with a ``RuntimeWarning``), or one by name:
        ``"inductor"`` (torch.compile's compiler, fused C++/Triton kernels), ``"jit"``
        (TorchScript, legacy; takes ``jit_options``), ``"eager"`` (replay of the traced
        graph), or a plugin's.
    :param background_compile: ``True`` (default): an inductor graph compiles in a
        child process while an interim TorchScript graph (under ``"auto"``) or the eager
        step keeps training, and is checked and swapped in at the first step after it
        is ready, so no step waits for the compiler (a cold inductor compile of a long
        enumerated chain takes about a minute). ``False``: the step after the first
        waits for the compile.
    {extra}"""


class _Compiled:
    """The compiled estimators' behaviour: one :class:`CompiledStep` per (model, guide),
    which SVI and ``loss_and_grads`` use."""

    def _set_compile_options(self, backend, on_change, on_dynamic, cache_size,
                             background_compile) -> None:
        owner = type(self).__name__
        if backend is not None and not isinstance(backend, str):
            raise validation.ArgumentTypeError(
                f"{owner}: backend must be a backend's name (str) or None, got {backend!r}")
        cache_size = validation.integer(owner, "cache_size", cache_size, minimum=1)
        validation.flag(owner, "background_compile", background_compile)
        self.backend = backend or DEFAULT_BACKEND
        self._options = {"on_change": on_change, "on_dynamic": on_dynamic,
                         "cache_size": cache_size, "jit_options": self.jit_options,
                         "ignore_warnings": self.ignore_jit_warnings,
                         "background_compile": background_compile}
        self._steps: dict = {}
        CompiledStep.check_options(self.backend, **self._options)

    def stepper(self, model, guide):
        """The compiled step of ``(model, guide)`` (eager when a subclass computes
        through Pyro's hooks)."""
        if self._pyro_hooks:
            return super().stepper(model, guide)
        key = (id(model), id(guide))
        step = self._steps.get(key)
        if step is None:
            import_dynamo_keeping_the_environment()  # (torch writes os.environ as it does)
            step = self._steps[key] = CompiledStep(self, model, guide, self.backend,
                                                   **self._options)
        return step

    def loss_and_surrogate_loss(self, model, guide, *args, **kwargs):
        """``(loss, surrogate_loss)`` as tensors: the negative ELBO and the negative
        surrogate whose gradient is the estimator's (Pyro's ``JitTrace_ELBO`` method;
        computed by the eager estimator here)."""
        estimate = self.objective(model, guide, args, kwargs)
        return -estimate.elbo, -estimate.surrogate


def compiled_variant(base: type, name: str, extra_doc: str = "") -> type:
    """``Jit<base>``: ``base`` with a compiled step; its constructor takes ``base``'s
    parameters (same names, defaults and order) plus :data:`COMPILE_OPTIONS`
    keyword-only."""
    signature = inspect.signature(base.__init__)
    base_params = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    options = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
               for k, v in COMPILE_OPTIONS.items()]

    def __init__(self, *args, **kwargs):  # noqa: N807
        bound = __init__.__signature__.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        values.pop("self")
        compile_options = {k: values.pop(k) for k in COMPILE_OPTIONS}
        base.__init__(self, **values)
        self._set_compile_options(**compile_options)

    __init__.__signature__ = signature.replace(parameters=base_params + options)
    doc = _DOC.format(base=base.__name__, extra=extra_doc)
    return type(name, (_Compiled, base), {"__init__": __init__, "__doc__": doc,
                                          "__module__": __name__})


JitTrace_ELBO = compiled_variant(Trace_ELBO, "JitTrace_ELBO")
JitTraceGraph_ELBO = compiled_variant(TraceGraph_ELBO, "JitTraceGraph_ELBO")
JitTraceEnum_ELBO = compiled_variant(TraceEnum_ELBO, "JitTraceEnum_ELBO")
JitRenyiELBO = compiled_variant(
    RenyiELBO, "JitRenyiELBO",
    "Not part of Pyro's API (Pyro has no compiled Renyi bound).\n")


def quietly_compiled(jit_cls: type, name: str) -> type:
    """``jit_cls`` with ``ignore_jit_warnings=True`` by default: what
    ``pyro_svi_ext.install(compile=True)`` binds to Pyro's eager names, so that an
    unchanged program gets the compiled step, and a model that cannot compile runs
    eagerly with one log line saying why (a ``WARNING`` record of
    ``pyro_svi_ext.compile.step``) instead of a warning."""
    signature = inspect.signature(jit_cls.__init__)
    params = [p.replace(default=True) if p.name == "ignore_jit_warnings" else p
              for p in signature.parameters.values()]

    def __init__(self, *args, **kwargs):  # noqa: N807
        bound = signature.bind(self, *args, **kwargs)
        if "ignore_jit_warnings" not in bound.arguments:
            bound.arguments["ignore_jit_warnings"] = True
        jit_cls.__init__(*bound.args, **bound.kwargs)

    __init__.__signature__ = signature.replace(parameters=params)
    doc = (f":class:`{jit_cls.__name__}` bound to Pyro's ``{jit_cls.__name__[3:]}`` by "
           "``install(compile=True)``: compiled in the background, eager until then, and "
           "eager for good (one log line) where the model cannot compile.")
    return type(name, (jit_cls,), {"__init__": __init__, "__doc__": doc,
                                   "__module__": __name__})


#: Pyro's eager names -> the compiled classes ``install(compile=True)`` binds to them
COMPILED_FOR = {cls.__name__[3:]: quietly_compiled(cls, "Compiled" + cls.__name__[3:])
                for cls in (JitTrace_ELBO, JitTraceGraph_ELBO, JitTraceEnum_ELBO,
                            JitRenyiELBO)}
