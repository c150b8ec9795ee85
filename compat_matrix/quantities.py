"""What a cell computes for a scenario: losses, gradients, parameters after K SVI steps,
and posterior statistics, for this package's implementation and for Pyro's own."""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from pathlib import Path
from types import ModuleType

import pyro
import pyro.infer
import pyro.optim
import torch

import pyro_svi_ext

IMPLS = {"ours": pyro_svi_ext, "pyro": pyro.infer}

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


def scenarios(module: ModuleType) -> dict:
    return {name[len("scenario_"):]: fn for name, fn in sorted(vars(module).items())
            if name.startswith("scenario_") and callable(fn)}


def _tolist(t: torch.Tensor):
    return t.detach().double().tolist()


def _fresh(fn):
    pyro.clear_param_store()
    model, guide, args, seed = fn()
    pyro.set_rng_seed(seed)
    return model, guide, args


def compute(fn, impl: str, svi_steps: int) -> dict:
    """``{quantity: value}`` for one scenario and implementation (``"ours"``/``"pyro"``)."""
    ns = IMPLS[impl]
    estimator = getattr(fn, "estimator", "Trace_ELBO")
    kwargs = dict(getattr(fn, "elbo_kwargs", {}))
    if impl == "pyro":  # e.g. compare a compiled estimator with Pyro's eager one
        estimator = getattr(fn, "pyro_estimator", estimator)
    else:
        kwargs.update(getattr(fn, "ours_kwargs", {}))
    out: dict = {}
    model, guide, args = _fresh(fn)
    out["loss"] = float(getattr(ns, estimator)(**kwargs).loss_and_grads(model, guide, *args))
    out["grads"] = {n: _tolist(p.grad) for n, p in
                    sorted(pyro.get_param_store().named_parameters()) if p.grad is not None}
    model, guide, args = _fresh(fn)
    svi = ns.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), getattr(ns, estimator)(**kwargs))
    out["svi_losses"] = [float(svi.step(*args)) for _ in range(svi_steps)]
    out["params"] = {k: _tolist(v) for k, v in sorted(pyro.get_param_store().items())}
    extras = getattr(fn, "extras", ())
    if "importance" in extras or "predictive" in extras:
        model, _, args = _fresh(fn)
        posterior = ns.Importance(model, None, num_samples=500).run(*args)
        out["log_normalizer"] = float(posterior.get_log_normalizer())
        marginal = ns.EmpiricalMarginal(posterior, "mu")
        out["marginal_mean"] = float(marginal.mean)
        out["marginal_variance"] = float(marginal.variance)
        if "predictive" in extras:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                predictive = ns.TracePredictive(model, posterior, 300).run(None, 4)
                samples = ns.EmpiricalMarginal(predictive)
            out["predictive_mean"] = _tolist(samples.mean)
            out["predictive_variance"] = _tolist(samples.variance)
    return out


def compute_module(module: ModuleType, svi_steps: int) -> dict:
    """``{scenario: {"ours.<q>": value, "pyro.<q>": value}}``; an implementation that
    raises records ``{"<impl>.error": message}`` instead."""
    results = {}
    for name, fn in scenarios(module).items():
        row: dict = {}
        for impl in IMPLS:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    values = compute(fn, impl, svi_steps)
                row.update({f"{impl}.{q}": v for q, v in values.items()})
            except Exception as err:  # recorded, reported per cell
                row[f"{impl}.error"] = f"{type(err).__name__}: {err}"
        results[name] = row
    return results


def environment() -> dict:
    import platform

    return {"pyro": pyro.__version__, "torch": torch.__version__.split("+")[0],
            "python": platform.python_version()}
