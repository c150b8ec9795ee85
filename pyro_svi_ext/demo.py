"""Demo: Bayesian linear regression on the bundled diabetes data (Efron et al., 2004).

Fits ``progression ~ Normal(X w + b, sigma)`` on standardized features with this
package's ``SVI`` + ``Trace_ELBO`` and a mean-field Normal guide, then prints posterior
summaries next to the least-squares fit.
"""

from __future__ import annotations

import csv
from importlib import resources

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
from pyro.distributions import constraints

from pyro_svi_ext import SVI, registry


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


def fit(num_steps: int = 3000, seed: int = 0, estimator: str = "trace_elbo") -> dict:
    """Run SVI; return standardized data, feature names, losses and the fitted params."""
    x, y, names = load_diabetes()
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}),
              registry.make(estimator))
    losses = [svi.step(x, y) for _ in range(num_steps)]
    store = pyro.get_param_store()
    params = {k: store[k].detach().clone() for k in store.keys()}
    return {"x": x, "y": y, "names": names, "losses": losses, "params": params}


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


def main(num_steps: int = 3000) -> dict:
    result = fit(num_steps)
    first, last = result["losses"][0], sum(result["losses"][-100:]) / 100
    print("Bayesian linear regression, diabetes data (Efron et al. 2004), n=442, 10 features")
    print(f"SVI with Trace_ELBO: {num_steps} steps, loss {first:.1f} -> {last:.1f}")
    print("Posterior of the standardized coefficients:")
    print(summary(result))
    return result
