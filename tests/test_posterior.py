"""Importance, EmpiricalMarginal, TracePredictive and TracePosterior against exact
conjugate answers and against Pyro's own classes on the same seeds."""

import math

import pyro
import pyro.distributions as dist
import pyro.infer
import pyro.optim
import pytest
import torch

from pyro_svi_ext import (
    SVI,
    EmpiricalMarginal,
    EmptyPosteriorError,
    Importance,
    Trace_ELBO,
    TracePosterior,
    TracePredictive,
)
from pyro_svi_ext.kernels import effective_sample_size, log_mean_exp, normalized_log_weights

# --- Normal-Normal: mu ~ N(0, 2^2), x_i ~ N(mu, 1) -----------------------------------
PRIOR_SD, NOISE = 2.0, 1.0
DATA = torch.tensor([1.1, 0.4, 1.9, 1.3, 0.8, 1.6, 0.2, 1.2])
N = len(DATA)
POST_PRECISION = 1 / PRIOR_SD**2 + N / NOISE**2
POST_MEAN = float(DATA.sum() / NOISE**2 / POST_PRECISION)
POST_SD = 1 / math.sqrt(POST_PRECISION)
LOG_EVIDENCE = float(dist.MultivariateNormal(
    torch.zeros(N), NOISE**2 * torch.eye(N) + PRIOR_SD**2 * torch.ones(N, N)).log_prob(DATA))


def normal_model(data, n=N):
    mu = pyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with pyro.plate("data", n):
        return pyro.sample("obs", dist.Normal(mu, NOISE), obs=data)


def near_posterior_guide(data, n=N):
    pyro.sample("mu", dist.Normal(POST_MEAN + 0.05, POST_SD * 1.3))


@pytest.mark.parametrize("guide, num_samples, tol", [
    (None, 20000, 0.05),               # prior proposals: ESS ~ 2000
    (near_posterior_guide, 4000, 0.01),
], ids=["prior", "guide"])
def test_importance_log_normalizer_and_moments_are_exact_for_normal_normal(guide, num_samples,
                                                                           tol):
    """Tolerances, each several Monte Carlo standard errors at these sample sizes (fixed
    seed): log evidence within ``tol``, posterior mean within 0.1 posterior sd, posterior
    variance within 15%."""
    pyro.set_rng_seed(0)
    posterior = Importance(normal_model, guide, num_samples=num_samples).run(DATA)
    assert abs(posterior.get_log_normalizer().item() - LOG_EVIDENCE) < tol
    marginal = EmpiricalMarginal(posterior, "mu")
    assert abs(marginal.mean.item() - POST_MEAN) < 0.1 * POST_SD
    assert abs(marginal.variance.item() / POST_SD**2 - 1) < 0.15
    ess = posterior.get_ESS().item()
    assert 100 < ess <= num_samples
    weights = posterior.get_normalized_weights()
    assert weights.shape == (num_samples,) and abs(weights.sum().item() - 1) < 1e-12


def test_beta_bernoulli_importance_matches_exact_evidence_and_moments():
    a, b = 2.0, 3.0
    flips = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    k, n = float(flips.sum()), len(flips)

    def model(flips):
        p = pyro.sample("p", dist.Beta(a, b))
        with pyro.plate("flips", len(flips)):
            pyro.sample("f", dist.Bernoulli(p), obs=flips)

    def log_beta(x, y):
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    exact = log_beta(a + k, b + n - k) - log_beta(a, b)
    post_a, post_b = a + k, b + n - k
    post_mean = post_a / (post_a + post_b)
    post_var = post_a * post_b / ((post_a + post_b) ** 2 * (post_a + post_b + 1))
    pyro.set_rng_seed(1)
    posterior = Importance(model, num_samples=20000).run(flips)
    assert abs(posterior.get_log_normalizer().item() - exact) < 0.03
    marginal = EmpiricalMarginal(posterior, sites="p")
    assert abs(marginal.mean.item() - post_mean) < 0.01
    assert abs(marginal.variance.item() / post_var - 1) < 0.1


def test_trace_predictive_matches_the_analytic_posterior_predictive():
    """Predictive for new observations: N(POST_MEAN, NOISE^2 + POST_SD^2)."""
    def exact_guide(data, n=N):
        pyro.sample("mu", dist.Normal(POST_MEAN, POST_SD))

    pyro.set_rng_seed(2)
    posterior = Importance(normal_model, exact_guide, num_samples=2000).run(DATA)
    predictive = TracePredictive(normal_model, posterior, num_samples=3000).run(None, 4)
    samples = EmpiricalMarginal(predictive)  # _RETURN: 4 new observations per draw
    assert samples.event_shape == (4,)
    pooled_mean = samples.mean.mean().item()
    pooled_var = samples.variance.mean().item()
    assert abs(pooled_mean - POST_MEAN) < 0.06
    assert abs(pooled_var / (NOISE**2 + POST_SD**2) - 1) < 0.06


def test_trace_predictive_works_with_svi_posteriors():
    def guide(data, n=N):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0),
                           constraint=dist.constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    pyro.set_rng_seed(3)
    svi = SVI(normal_model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO(),
              num_samples=500, num_steps=1500)
    svi.run(DATA)
    predictive = TracePredictive(normal_model, svi, num_samples=1000).run(None, 2)
    samples = EmpiricalMarginal(predictive)
    assert abs(samples.mean.mean().item() - POST_MEAN) < 0.1
    assert abs(samples.variance.mean().item() / (NOISE**2 + POST_SD**2) - 1) < 0.15


# --- agreement with Pyro's classes on the same seeds ----------------------------------


@pytest.mark.parametrize("guide", [None, near_posterior_guide], ids=["prior", "guide"])
def test_importance_agrees_with_pyro(guide):
    pyro.set_rng_seed(4)
    ours = Importance(normal_model, guide, num_samples=300).run(DATA)
    pyro.set_rng_seed(4)
    theirs = pyro.infer.Importance(normal_model, guide, num_samples=300).run(DATA)
    torch.testing.assert_close(torch.stack(ours.log_weights), torch.stack(theirs.log_weights))
    assert ours.get_log_normalizer().item() == pytest.approx(
        theirs.get_log_normalizer().item(), rel=1e-5)
    assert ours.get_ESS().item() == pytest.approx(theirs.get_ESS().item(), rel=1e-4)
    ours_m = EmpiricalMarginal(ours, "mu")
    theirs_m = pyro.infer.EmpiricalMarginal(theirs, "mu")
    assert ours_m.mean.item() == pytest.approx(theirs_m.mean.item(), rel=1e-5)
    assert ours_m.variance.item() == pytest.approx(theirs_m.variance.item(), rel=1e-4)
    # each package's marginal reads the other's posterior
    assert EmpiricalMarginal(theirs, "mu").mean.item() == pytest.approx(ours_m.mean.item())
    assert pyro.infer.EmpiricalMarginal(ours, "mu").mean.item() == pytest.approx(
        ours_m.mean.item())


def test_trace_predictive_agrees_with_pyro():
    pyro.set_rng_seed(5)
    ours_post = Importance(normal_model, near_posterior_guide, num_samples=50).run(DATA)
    ours = TracePredictive(normal_model, ours_post, num_samples=40).run(None, 3)
    pyro.set_rng_seed(5)
    theirs_post = pyro.infer.Importance(normal_model, near_posterior_guide,
                                        num_samples=50).run(DATA)
    theirs = pyro.infer.TracePredictive(normal_model, theirs_post, num_samples=40).run(None, 3)
    ours_ret = torch.stack([t.nodes["_RETURN"]["value"] for t in ours])
    theirs_ret = torch.stack([t.nodes["_RETURN"]["value"] for t in theirs.exec_traces])
    torch.testing.assert_close(ours_ret, theirs_ret)


def test_predictive_resamples_local_latents_to_a_new_plate_size():
    def local_model(n, data=None):
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            return pyro.sample("x", dist.Normal(z, 0.1), obs=data)

    pyro.set_rng_seed(6)
    posterior = Importance(local_model, num_samples=20).run(5, torch.zeros(5))
    predictive = TracePredictive(local_model, posterior, 10).run(7)
    assert all(t.nodes["z"]["value"].shape == (7,) for t in predictive)
    pyro.set_rng_seed(6)
    pyro_post = pyro.infer.Importance(local_model, num_samples=20).run(5, torch.zeros(5))
    pyro_pred = pyro.infer.TracePredictive(local_model, pyro_post, 10).run(7)
    torch.testing.assert_close(
        torch.stack([t.nodes["_RETURN"]["value"] for t in predictive]),
        torch.stack([t.nodes["_RETURN"]["value"] for t in pyro_pred.exec_traces]))


# --- robustness and errors ------------------------------------------------------------


def test_log_weight_kernels_are_finite_over_a_huge_range():
    log_w = torch.linspace(-1e4, 0.0, 1001, dtype=torch.float64)
    norm = normalized_log_weights(log_w).exp()
    assert torch.isfinite(norm).all() and abs(norm.sum().item() - 1) < 1e-12
    ess = effective_sample_size(log_w).item()
    assert math.isfinite(ess) and 1 <= ess < 2  # dominated by the top weight
    assert log_mean_exp(log_w).item() == pytest.approx(-math.log(1001) + math.log(
        1 / (1 - math.exp(-10))), rel=1e-9)
    spread = torch.tensor([0.0, -690.8, -1e300], dtype=torch.float64)  # ratios past 1e300
    assert torch.isfinite(normalized_log_weights(spread).exp()).all()


def test_importance_weights_from_extreme_log_weights():
    posterior = Importance(normal_model, num_samples=3)
    posterior.run(DATA)
    posterior.log_weights = [torch.tensor(-1e4), torch.tensor(-5e3), torch.tensor(0.0)]
    assert torch.isfinite(posterior.get_normalized_weights()).all()
    assert posterior.get_ESS().item() == pytest.approx(1.0)
    assert math.isfinite(posterior.get_log_normalizer().item())


def test_empty_posteriors_raise_instead_of_nan():
    posterior = Importance(normal_model, num_samples=5)
    with pytest.raises(EmptyPosteriorError, match=r"call \.run"):
        posterior.get_log_normalizer()
    with pytest.raises(EmptyPosteriorError):
        EmpiricalMarginal(posterior, "mu")
    with pytest.raises(EmptyPosteriorError):
        posterior()
    with pytest.raises(ValueError, match="num_samples"):
        Importance(normal_model, num_samples=0)


def test_marginal_site_errors_name_the_sites():
    def two_shapes(data):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(a + b.sum(), 1.0), obs=data)

    posterior = Importance(two_shapes, num_samples=4).run(torch.tensor(0.5))
    with pytest.raises(ValueError, match=r"'a': \(\), 'b': \(2,\)"):
        EmpiricalMarginal(posterior, ["a", "b"])
    with pytest.raises(KeyError, match="site 'c'"):
        EmpiricalMarginal(posterior, "c")
    stacked = EmpiricalMarginal(Importance(normal_model, num_samples=4).run(DATA),
                                ["mu", "mu"])
    assert stacked.event_shape == (2,)


def test_importance_defaults_to_ten_samples_and_prior_proposals():
    posterior = Importance(normal_model)
    assert posterior.num_samples == 10
    posterior.run(DATA)
    assert len(posterior) == 10 and len(posterior.chain_ids) == 10
    assert all(t.nodes["obs"]["is_observed"] for t in posterior)
    assert isinstance(posterior, pyro.infer.abstract_infer.TracePosterior)


def test_trace_posterior_chains_and_marginals():
    class TwoChains(TracePosterior):
        def _traces(self, *args):
            for i in range(6):
                trace = pyro.poutine.trace(normal_model).get_trace(DATA)
                yield trace, 0.0, i % 2

    posterior = TwoChains(num_chains=2).run()
    assert posterior.chain_ids == [0, 1, 0, 1, 0, 1]
    marginal = posterior.marginal(["mu"]).empirical["mu"]
    assert marginal.batch_shape == (2,)
    drawn = posterior()
    assert "obs" not in drawn.nodes and "mu" in drawn.nodes
