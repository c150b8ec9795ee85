"""What a cell computes for a scenario (:class:`compat_matrix.schema.Scenario`): loss and
gradients, losses and parameters after K SVI steps, and posterior statistics, for this
package's implementation and for Pyro's own."""

from __future__ import annotations

import importlib
import importlib.util
import platform
import traceback
import warnings
from pathlib import Path
from types import ModuleType

import pyro
import pyro.infer
import pyro.optim
import torch

import pyro_svi_ext
from compat_matrix.schema import IMPLEMENTATIONS, Scenario, build, scenario_functions

NAMESPACES = {"ours": pyro_svi_ext, "pyro": pyro.infer}
assert tuple(NAMESPACES) == IMPLEMENTATIONS

# per kind of quantity: (rtol, atol, reason)
TOLERANCES = {
    "loss": (1e-5, 1e-6, "float32 reductions may be reordered by another torch or pyro"),
    "grads": (1e-5, 1e-6, "float32 reductions may be reordered by another torch or pyro"),
    "svi_losses": (1e-4, 1e-5, "20 Adam steps accumulate float32 rounding"),
    "params": (1e-4, 1e-5, "20 Adam steps accumulate float32 rounding"),
    "log_normalizer": (1e-5, 1e-6, "deterministic given the seed; float32 log weights"),
    "marginal_mean": (1e-5, 1e-6, "deterministic given the seed; float32 samples"),
    "marginal_variance": (1e-4, 1e-6, "a difference of float32 moments"),
    "predictive_mean": (1e-4, 1e-5, "resampled traces, float32 moments"),
    "predictive_variance": (1e-4, 1e-5, "resampled traces, float32 moments"),
}


def load_module(spec: str) -> ModuleType:
    """A scenario module by dotted name or by file path."""
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec).resolve()
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def _tolist(t: torch.Tensor):
    return t.detach().double().tolist()


def _fresh(name: str, fn) -> Scenario:
    pyro.clear_param_store()
    scenario = build(name, fn)
    pyro.set_rng_seed(scenario.seed)
    return scenario


def compute(name: str, fn, impl: str, svi_steps: int) -> dict:
    """``{quantity: value}`` for one scenario and implementation (``"ours"``/``"pyro"``)."""
    ns = NAMESPACES[impl]
    out: dict = {}
    sc = _fresh(name, fn)
    estimator, kwargs = sc.estimator_for(impl)
    elbo = getattr(ns, estimator)(**kwargs)
    out["loss"] = float(elbo.loss_and_grads(sc.model, sc.guide, *sc.args, **sc.kwargs))
    out["grads"] = {n: _tolist(p.grad) for n, p in
                    sorted(pyro.get_param_store().named_parameters()) if p.grad is not None}
    sc = _fresh(name, fn)
    svi = ns.SVI(sc.model, sc.guide, pyro.optim.Adam({"lr": sc.lr}),
                 getattr(ns, estimator)(**kwargs))
    steps = svi_steps if sc.svi_steps is None else sc.svi_steps
    out["svi_losses"] = [float(svi.step(*sc.args, **sc.kwargs)) for _ in range(steps)]
    out["params"] = {k: _tolist(v) for k, v in sorted(pyro.get_param_store().items())}
    if sc.posterior is not None:
        out.update(_posterior(name, fn, ns))
    return out


def _posterior(name: str, fn, ns: ModuleType) -> dict:
    sc = _fresh(name, fn)
    spec = sc.posterior
    posterior = ns.Importance(sc.model, None, num_samples=spec.num_samples).run(
        *sc.args, **sc.kwargs)
    out = {"log_normalizer": float(posterior.get_log_normalizer()),
           "marginal_mean": {}, "marginal_variance": {}}
    for site in spec.sites:
        marginal = ns.EmpiricalMarginal(posterior, site)
        out["marginal_mean"][site] = _tolist(marginal.mean)
        out["marginal_variance"][site] = _tolist(marginal.variance)
    if spec.predictive_args is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            predictive = ns.TracePredictive(sc.model, posterior, spec.predictive_samples).run(
                *spec.predictive_args, **spec.predictive_kwargs)
            samples = ns.EmpiricalMarginal(predictive, spec.predictive_site)
        out["predictive_mean"] = _tolist(samples.mean)
        out["predictive_variance"] = _tolist(samples.variance)
    return out


def error_record(err: BaseException) -> dict:
    """An exception as a result: its type, its first line, and the whole traceback."""
    message = str(err).strip().splitlines()
    return {"type": type(err).__name__, "message": message[0] if message else "",
            "traceback": "".join(traceback.format_exception(err))}


def error_line(record) -> str:
    """``"TypeError: first line"`` for an error record (or a legacy string)."""
    if isinstance(record, str):
        return record
    return f"{record['type']}: {record['message']}" if record["message"] else record["type"]


def compute_module(module: ModuleType, svi_steps: int) -> dict:
    """``{scenario: {"ours.<q>": value, "pyro.<q>": value}}``; an implementation that
    raises records ``{"<impl>.error": error_record}`` instead of its quantities."""
    results = {}
    for name, fn in scenario_functions(module).items():
        row: dict = {}
        for impl in IMPLEMENTATIONS:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    values = compute(name, fn, impl, svi_steps)
                row.update({f"{impl}.{q}": v for q, v in values.items()})
            except Exception as err:  # a result: reported per cell and per migration
                row[f"{impl}.error"] = error_record(err)
        results[name] = row
    return results


def environment() -> dict:
    return {"pyro": pyro.__version__, "torch": torch.__version__.split("+")[0],
            "python": platform.python_version()}
