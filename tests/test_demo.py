"""The demo fits the bundled data: posterior means land near least squares."""

import torch

from pyro_svi_ext import demo
from pyro_svi_ext.cli import main


def test_bundled_data_loads():
    x, y, names = demo.load_diabetes()
    assert x.shape == (442, 10) and y.shape == (442,)
    assert names[:4] == ["age", "sex", "bmi", "bp"]
    assert 25 <= y.min() and y.max() <= 346  # the published response range


def test_demo_posterior_means_match_least_squares():
    result = demo.fit(num_steps=1500, seed=0)
    x, y, p = result["x"], result["y"], result["params"]
    design = torch.cat([x, torch.ones(len(x), 1)], 1)
    ols = torch.linalg.lstsq(design, y.unsqueeze(-1)).solution.squeeze(-1)
    # weakly correlated coefficients: close to least squares (prior N(0,1) is weak)
    for i in (2, 3, 7, 9):  # bmi, bp, s4, s6
        assert abs(p["w_loc"][i] - ols[i]) < 0.05, (i, p["w_loc"][i], ols[i])
    assert sum(result["losses"][-100:]) < sum(result["losses"][:100])
    assert 0.6 < p["sigma_loc"].exp() < 0.8  # residual sd of the standardized fit ~0.69


def test_cli_list_prints_the_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "Trace_ELBO" in out and "pyro_svi_ext.builtin" in out


def test_demo_prints_the_running_loss_the_caveat_and_writes_its_plot(capsys, tmp_path):
    import pytest

    pytest.importorskip("matplotlib", reason="the plots extra is not installed")
    demo.main(num_steps=10, plot=str(tmp_path / "demo.png"))
    out = capsys.readouterr().out
    assert "10 steps" in out and "(mean of the last 10)" in out
    assert "The mean-field guide understates" in out and "full-rank posterior" in out
    assert (tmp_path / "demo.png").stat().st_size > 1000


def test_cli_refuses_zero_steps_and_says_its_version(capsys):
    import pytest

    import pyro_svi_ext

    with pytest.raises(SystemExit):
        main(["demo", "--steps", "0"])
    assert "expected a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--version"])
    assert pyro_svi_ext.__version__ in capsys.readouterr().out


def test_the_mean_field_caveat_compares_with_the_exact_full_rank_sd():
    result = demo.fit(num_steps=1500, seed=0)
    exact = demo.exact_sd(result)
    mean_field = result["params"]["w_scale"]
    # s1 and s2 (r=0.90): the mean-field sd is several times too small
    assert (exact[4:6] > 3 * mean_field[4:6]).all()
    # an almost uncorrelated feature (sex): close
    assert abs(float(exact[1] / mean_field[1]) - 1) < 0.3
