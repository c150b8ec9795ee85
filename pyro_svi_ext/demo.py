"""Demo: Bayesian linear regression on the bundled diabetes data (Efron et al., 2004).

Fits ``progression ~ Normal(X w + b, sigma)`` on standardized features with this
package's ``SVI`` + ``Trace_ELBO`` and a mean-field Normal guide, then prints posterior
summaries next to the least-squares fit.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from importlib import resources
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
from pyro.distributions import constraints

from pyro_svi_ext import SVI, registry
from pyro_svi_ext.infer.fit import running_loss

#: when stdout is not a terminal (a log, a pipe, CI), a progress line at most this often
PROGRESS_EVERY_S = 5.0


def user_cache_dir() -> Path:
    """This package's per-user cache, outside any source tree: ``$PYRO_SVI_EXT_CACHE``,
    else ``$XDG_CACHE_HOME/pyro-svi-ext``, else ``~/.cache/pyro-svi-ext``."""
    if os.environ.get("PYRO_SVI_EXT_CACHE"):
        return Path(os.environ["PYRO_SVI_EXT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pyro-svi-ext"


def default_plot_path() -> Path:
    """Where the demo writes its loss curve unless told: ``demo-loss.png`` in
    :func:`user_cache_dir` (not the current directory, which may be a clone)."""
    return user_cache_dir() / "demo-loss.png"


def progress_lines(num_steps: int, every_s: float | None = None, out=None):
    """A ``fit`` callback that prints ``step i/N, running loss x`` at most every
    ``every_s`` seconds (default :data:`PROGRESS_EVERY_S`), and at the last step, to
    ``out`` (default stdout)."""
    every_s = PROGRESS_EVERY_S if every_s is None else every_s
    last = [time.monotonic()]
    losses: list[float] = []

    def callback(svi, step: int, loss: float) -> bool:
        losses.append(loss)
        now = time.monotonic()
        if now - last[0] >= every_s or step == num_steps - 1:
            last[0] = now
            print(f"step {step + 1}/{num_steps}, running loss {running_loss(losses):.1f}",
                  file=out or sys.stdout, flush=True)
        return False

    return callback


def load_diabetes() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The bundled data: features ``(442, 10)``, response ``(442,)``, feature names."""
    with resources.files("pyro_svi_ext.data").joinpath("diabetes.csv").open() as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    values = torch.tensor([[float(v) for v in row] for row in body])
    return values[:, :-1], values[:, -1], header[:-1]


def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("patients", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w + b, sigma), obs=y)


def guide(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    d = x.shape[-1]
    w_loc = pyro.param("w_loc", torch.zeros(d))
    w_scale = pyro.param("w_scale", torch.full((d,), 0.1), constraint=constraints.positive)
    b_loc = pyro.param("b_loc", torch.tensor(0.0))
    b_scale = pyro.param("b_scale", torch.tensor(0.1), constraint=constraints.positive)
    s_loc = pyro.param("sigma_loc", torch.tensor(0.0))
    s_scale = pyro.param("sigma_scale", torch.tensor(0.1), constraint=constraints.positive)
    pyro.sample("w", dist.Normal(w_loc, w_scale).to_event(1))
    pyro.sample("b", dist.Normal(b_loc, b_scale))
    pyro.sample("sigma", dist.LogNormal(s_loc, s_scale))


def standardized() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    x, y, names = load_diabetes()
    return (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std(), names


def fit(num_steps: int = 3000, seed: int = 0, estimator: str = "trace_elbo",
        progress_bar: bool | None = False, callbacks=()) -> dict:
    """Run SVI; return standardized data, feature names, losses and the fitted params."""
    x, y, names = standardized()
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}),
              registry.make(estimator))
    losses = svi.fit(num_steps, x, y, progress_bar=progress_bar, callbacks=callbacks)
    store = pyro.get_param_store()
    params = {k: store[k].detach().clone() for k in store.keys()}
    return {"x": x, "y": y, "names": names, "losses": losses, "params": params}


def exact_sd(result: dict) -> torch.Tensor:
    """Posterior sd of the coefficients that a full-rank posterior has, given sigma at
    its posterior median: the Gaussian ``N(0, I)`` prior times the likelihood gives the
    covariance ``(D^T D / sigma^2 + I)^-1`` (``D``: features and an intercept column),
    correlations included."""
    x = result["x"]
    design = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
    sigma = result["params"]["sigma_loc"].exp()
    precision = design.T @ design / sigma**2 + torch.eye(design.shape[1])
    return torch.linalg.inv(precision).diagonal().sqrt()[:x.shape[-1]]


def summary(result: dict) -> str:
    """Posterior mean, sd and 90% interval of each coefficient, beside least squares."""
    x, y, p = result["x"], result["y"], result["params"]
    design = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
    ols = torch.linalg.lstsq(design, y.unsqueeze(-1)).solution.squeeze(-1)
    z = 1.6449
    lines = [f"{'coef':>6} {'mean':>8} {'sd':>7} {'5%':>8} {'95%':>8} {'least-sq':>9}"]
    rows = [(n, p["w_loc"][i], p["w_scale"][i], ols[i]) for i, n in enumerate(result["names"])]
    rows.append(("b", p["b_loc"], p["b_scale"], ols[-1]))
    for name, mean, sd, ls in rows:
        lines.append(f"{name:>6} {mean:8.3f} {sd:7.3f} {mean - z * sd:8.3f} "
                     f"{mean + z * sd:8.3f} {ls:9.3f}")
    sigma_median = p["sigma_loc"].exp()
    lines.append(f"sigma (posterior median) {sigma_median:.3f}")
    return "\n".join(lines)


def understatement(result: dict, full_sd: torch.Tensor) -> str:
    """What the mean-field guide understates: the sd of the most correlated pair of
    features, beside the full-rank posterior's (:func:`exact_sd`)."""
    x, names = result["x"], result["names"]
    corr = torch.corrcoef(x.T).abs() - torch.eye(x.shape[-1])
    i, j = divmod(int(corr.argmax()), x.shape[-1])
    mean_field = result["params"]["w_scale"]
    return (f"The mean-field guide understates what correlated features leave uncertain: "
            f"{names[i]} and {names[j]} (r={float(torch.corrcoef(x.T)[i, j]):.2f}) get sd "
            f"{float(mean_field[i]):.3f} and {float(mean_field[j]):.3f}; the full-rank "
            f"posterior (exact given sigma) {float(full_sd[i]):.3f} and "
            f"{float(full_sd[j]):.3f}.")


def main(num_steps: int = 3000, plot: str | Path | None = None) -> dict:
    """Fit, print the posterior beside least squares and the mean-field caveat, and
    write the loss curve to ``plot`` (when matplotlib is installed; None: no picture).
    While fitting: a progress bar on a terminal, else a line every few seconds."""
    print("Bayesian linear regression, diabetes data (Efron et al. 2004), n=442, 10 features",
          flush=True)
    quiet = not sys.stdout.isatty()
    result = fit(num_steps, progress_bar=None,
                 callbacks=[progress_lines(num_steps)] if quiet else ())
    losses = result["losses"]
    print(f"SVI with Trace_ELBO: {len(losses)} steps, loss {losses[0]:.1f} -> "
          f"{running_loss(losses):.1f} (mean of the last {min(len(losses), 100)})")
    print("Posterior of the standardized coefficients (mean-field Normal guide):")
    print(summary(result))
    print(understatement(result, exact_sd(result)))
    if plot:
        try:
            from pyro_svi_ext.viz import plot_losses

            Path(plot).parent.mkdir(parents=True, exist_ok=True)
            plot_losses(losses, str(plot), title="demo: SVI loss")
            print(f"loss curve written to {plot}")
        except ImportError:
            print("(pip install 'pyro-svi-ext[plots]' for the loss curve picture)")
    return result
