"""Trace_ELBO gives Pyro's loss and gradients on the same random draws."""

import pyro.infer
import pytest
from parity import assert_same_loss_and_grads, run_loss_and_grads

import pyro_svi_ext
from compat_matrix.catalogue import CASES


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_grads_match_pyro(case, seed):
    ours = run_loss_and_grads(pyro_svi_ext.Trace_ELBO(**case.elbo_kwargs), case, seed)
    theirs = run_loss_and_grads(pyro.infer.Trace_ELBO(**case.elbo_kwargs), case, seed)
    assert theirs[1], "the case must have gradients to compare"
    assert_same_loss_and_grads(ours, theirs)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_differentiable_loss_matches_pyro(case):
    method = "differentiable_loss"
    ours = run_loss_and_grads(pyro_svi_ext.Trace_ELBO(**case.elbo_kwargs), case, 3, method)
    theirs = run_loss_and_grads(pyro.infer.Trace_ELBO(**case.elbo_kwargs), case, 3, method)
    assert_same_loss_and_grads(ours, theirs)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_loss_matches_pyro(case):
    ours, _ = run_loss_and_grads(pyro_svi_ext.Trace_ELBO(**case.elbo_kwargs), case, 5, "loss")
    theirs, _ = run_loss_and_grads(pyro.infer.Trace_ELBO(**case.elbo_kwargs), case, 5, "loss")
    assert abs(ours - theirs) <= 1e-6 + 1e-5 * abs(theirs)
