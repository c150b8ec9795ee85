"""Per-site loss breakdown: each site's share, per plate element, summing to the loss."""

from __future__ import annotations

import pyro
import pytest
import torch

from compat_matrix.catalogue import pick
from pyro_svi_ext import RenyiELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO


@pytest.mark.parametrize("cls", [Trace_ELBO, TraceGraph_ELBO])
@pytest.mark.parametrize("case", pick("normal_normal", "nested_plates", "mask",
                                      "poutine_scale", "nonreparam_in_plate",
                                      "vectorized_particles", "num_particles_4"), ids=repr)
def test_the_site_shares_sum_to_the_loss_on_the_same_draws(cls, case):
    model, guide, args = case.build()
    elbo = cls(**case.elbo_kwargs)
    pyro.set_rng_seed(3)
    shares = elbo.site_losses(model, guide, *args)
    pyro.set_rng_seed(3)
    loss = elbo.loss(model, guide, *args)
    assert sum(s.loss for s in shares.values()) == pytest.approx(loss, rel=1e-5, abs=1e-5)
    for share in shares.values():
        assert float(share.elements.sum()) == pytest.approx(share.loss, rel=1e-4, abs=1e-4)


def test_a_share_says_its_log_p_log_q_and_its_plate_elements():
    (case,) = pick("nested_plates")
    model, guide, args = case.build()
    shares = Trace_ELBO().site_losses(model, guide, *args)
    assert set(shares) == {"r", "x", "c"}
    observed, latent = shares["x"], shares["r"]
    assert observed.guide is None and observed.loss == pytest.approx(-observed.model)
    assert latent.loss == pytest.approx(latent.guide - latent.model)
    assert observed.elements.shape == (3, 4) and observed.plates == ("rows", "cols")
    assert latent.elements.shape == (3, 1) and latent.plates == ("rows", None)
    torch.testing.assert_close(observed.elements.sum(-1).sum(), torch.tensor(observed.loss))


@pytest.mark.parametrize("cls", [TraceEnum_ELBO, RenyiELBO])
def test_estimators_that_are_no_sum_over_sites_say_so(cls):
    (case,) = pick("plate")
    model, guide, args = case.build()
    with pytest.raises(NotImplementedError, match="not a sum of per-site terms"):
        cls().site_losses(model, guide, *args)
