"""Plots (matplotlib) and the ArviZ export: rendered to files and read back; ArviZ's
summary of a conjugate model is the exact posterior within Monte Carlo error."""

from __future__ import annotations

import math

import pyro
import pyro.optim
import pytest
import torch

from compat_matrix.catalogue import NORMAL_DATA, pick
from pyro_svi_ext import SVI, Importance, Trace_ELBO

matplotlib = pytest.importorskip("matplotlib", reason="the plots extra is not installed")


def _fit():
    (case,) = pick("normal_normal")
    model, guide, args = case.build()
    pyro.set_rng_seed(0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO(num_particles=4))
    losses = svi.fit(400, *args)
    return model, guide, args, losses


def _png_size(path) -> tuple[int, int]:
    from matplotlib.image import imread

    return imread(path).shape[:2]


def test_the_loss_curve_is_drawn_with_its_running_mean(tmp_path):
    from pyro_svi_ext.viz import plot_losses, smoothed

    _, _, _, losses = _fit()
    fig = plot_losses(losses, tmp_path / "loss.png", window=50)
    (ax,) = fig.axes
    raw, mean = ax.get_lines()
    assert list(raw.get_ydata()) == list(losses)
    assert list(mean.get_ydata()) == pytest.approx(smoothed(list(losses), 50))
    assert mean.get_ydata()[-1] < mean.get_ydata()[50]  # it trained
    assert _png_size(tmp_path / "loss.png") == (350, 600)


def test_marginals_come_from_a_posterior_or_a_guide(tmp_path):
    from pyro_svi_ext.viz import plot_marginals

    model, guide, args, _ = _fit()
    posterior = Importance(model, guide, num_samples=300).run(*args)
    for source, name in ((posterior, "posterior.png"), (guide, "guide.png")):
        fig = plot_marginals(source, ["mu"], *args, path=tmp_path / name, num_samples=300)
        (ax,) = [a for a in fig.axes if a.get_visible()]
        assert ax.get_title() == "mu" and len(ax.patches) == 40
        assert (tmp_path / name).stat().st_size > 1000


def test_the_arviz_export_has_the_groups_dims_and_the_exact_posterior():
    az = pytest.importorskip("arviz", reason="the arviz extra is not installed")
    from pyro_svi_ext.inference_data import to_inference_data

    (case,) = pick("normal_normal")
    model, _, args = case.build()
    pyro.set_rng_seed(1)
    posterior = Importance(model, None, num_samples=20000).run(*args)
    idata = to_inference_data(model, posterior, *args, num_samples=4000)
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "log_likelihood",
                                   "observed_data"}
    assert idata.observed_data["obs"].dims == ("data",)
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "data")
    assert idata.posterior_predictive["obs"].shape == (1, 4000, len(NORMAL_DATA))
    # mu ~ N(0, 2^2), obs ~ N(mu, 1): the exact posterior
    precision = 1 / 4 + len(NORMAL_DATA)
    mean, sd = float(NORMAL_DATA.sum()) / precision, precision ** -0.5
    summary = az.summary(idata, var_names=["mu"], kind="stats")
    mc_error = 4 * sd / math.sqrt(4000) + 0.02  # draws, plus the importance weights' error
    assert abs(summary.loc["mu", "mean"] - mean) < mc_error
    assert abs(summary.loc["mu", "sd"] - sd) < 0.1 * sd
    torch.testing.assert_close(torch.as_tensor(idata.observed_data["obs"].values),
                               NORMAL_DATA)
