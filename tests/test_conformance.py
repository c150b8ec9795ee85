"""The drop-in contract computed from the installed Pyro (the same check runs in every
cell of the compatibility matrix)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.infer
import pytest
import torch
from pyro import poutine

import pyro_svi_ext
from compat_matrix.conformance import DOCUMENTED, conformance
from pyro_svi_ext import dropin


def test_every_class_has_pyros_parameters_members_and_hooks():
    rows = conformance()
    assert {r["class"] for r in rows} == set(dropin.REBOUND)
    for row in rows:
        assert row["missing"] == [], row
    assert rows[0]["documented"] == DOCUMENTED["SVI"]


def test_a_missing_parameter_member_hook_or_attribute_is_reported(monkeypatch):
    class Narrow:
        def __init__(self, num_particles=1, max_plate_nesting=float("inf")):
            self.num_particles = num_particles

        def loss(self, model, guide, *args, **kwargs):
            return 0.0

        def loss_and_grads(self, model, guide, *args, **kwargs):
            return 0.0

    monkeypatch.setattr(pyro_svi_ext, "Trace_ELBO", Narrow)
    missing = next(r for r in conformance() if r["class"] == "Trace_ELBO")["missing"]
    for gap in ("parameter tail_adaptive_beta", "parameter ignore_jit_warnings",
                "member differentiable_loss", "hook _differentiable_loss_particle",
                "hook _get_traces", "attribute max_plate_nesting"):
        assert gap in missing
    assert "attribute num_particles" not in missing


def test_a_changed_default_is_reported_unless_documented(monkeypatch):
    class Renamed(pyro_svi_ext.Trace_ELBO):
        def __init__(self, num_particles=2, *args, **kwargs):
            super().__init__(num_particles, *args, **kwargs)

    monkeypatch.setattr(pyro_svi_ext, "Trace_ELBO", Renamed)
    row = next(r for r in conformance() if r["class"] == "Trace_ELBO")
    assert "default of num_particles: Pyro 1, ours 2" in row["missing"]
    row = next(r for r in conformance({"Trace_ELBO": {
        "default of num_particles: Pyro 1, ours 2": "why"}}) if r["class"] == "Trace_ELBO")
    assert row["documented"] == {"default of num_particles: Pyro 1, ours 2": "why"}


def test_backward_sample_messenger_takes_pyros_traces():
    data = torch.tensor([5.0, 5.2, -5.1])

    @pyro.infer.config_enumerate
    def model():
        with pyro.plate("points", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(10.0 * z - 5.0, 0.3), obs=data)

    pyro_elbo = dropin.PYRO_CLASSES["TraceEnum_ELBO"](max_plate_nesting=1)
    model_trace, guide_trace = next(pyro_elbo._get_traces(model, lambda: None, (), {}))
    with pyro_svi_ext.BackwardSampleMessenger(model_trace, guide_trace):
        trace = poutine.trace(model).get_trace()
    assert trace.nodes["z"]["value"].tolist() == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("name", sorted(dropin.REBOUND))
def test_the_switch_rebinds_each_name_everywhere_pyro_defines_it(name):
    import importlib

    with dropin.installed():
        for module in dropin.REBOUND[name]:
            assert getattr(importlib.import_module(module), name) is getattr(pyro_svi_ext, name)
