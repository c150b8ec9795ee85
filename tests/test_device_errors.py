"""Data on one device and params on another: a clear error naming the run, the site and
where the step's tensors are, and nothing changed. Run here with the ``meta`` device
standing in for CUDA (torch raises the same kind of error for any two devices); the
CUDA tier (``test_cuda.py``) runs the same mix with a real device."""

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch

from pyro_svi_ext import SVI, JitTrace_ELBO, Trace_ELBO
from pyro_svi_ext.errors import DeviceMismatchError
from pyro_svi_ext.trace.devices import is_device_mismatch, where_tensors_are


def regression(param_device: str):
    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(3, device=param_device), 1.0)
                        .to_event(1))
        with pyro.plate("data", x.shape[0], device=param_device):
            pyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)

    def guide(x, y):
        loc = pyro.param("loc", torch.zeros(3, device=param_device))
        pyro.sample("w", dist.Normal(loc, 1.0).to_event(1))

    return model, guide


@pytest.fixture(autouse=True)
def no_validation():
    pyro.enable_validation(False)  # Pyro's checks read values, which a meta tensor has not


@pytest.mark.parametrize("elbo", [Trace_ELBO, JitTrace_ELBO])
@pytest.mark.parametrize("data_device, param_device", [("cpu", "meta"), ("meta", "cpu")])
def test_data_and_params_on_two_devices_name_the_run_site_and_devices(
        elbo, data_device, param_device):
    model, guide = regression(param_device)
    x, y = torch.randn(5, 3, device=data_device), torch.randn(5, device=data_device)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), elbo())
    with pytest.raises(DeviceMismatchError) as caught:
        svi.step(x, y)
    text = str(caught.value)
    assert "tensors on different devices in the model, after its sample site 'w'" in text
    assert f"{param_device}: param 'loc'" in text
    assert f"{data_device}: argument #0, argument #1" in text
    assert isinstance(caught.value, RuntimeError) and is_device_mismatch(caught.value.__cause__)
    assert not list(pyro.get_param_store().keys())  # the failed step created nothing


def test_a_guide_network_on_another_device_names_the_guide():
    net = torch.nn.Linear(3, 1, device="meta")

    def guide(x, y):
        pyro.module("net", net)
        pyro.sample("w", dist.Normal(net(x).mean(), 1.0))

    def model(x, y):
        pyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(DeviceMismatchError,
                       match="in the guide, before its first sample site: .* This step's "
                             r"tensors are on meta: param 'net\$\$\$weight'"):
        Trace_ELBO().loss(model, guide, torch.randn(4, 3), None)


def test_an_observed_value_on_another_device_names_the_site_after_pyros_phrase():
    model, guide = regression("meta")
    x = torch.randn(5, 3, device="meta")
    with pytest.raises(DeviceMismatchError,
                       match=r"^Error while computing log_prob at site 'y' \(model\): its "
                             "value is on cpu, its distribution's tensors on meta"):
        Trace_ELBO().loss(model, guide, x, torch.randn(5))


def test_other_runtime_errors_pass_through_unchanged():
    def model():
        raise RuntimeError("a bug of the model's own")

    with pytest.raises(RuntimeError, match=r"^a bug of the model's own$") as caught:
        Trace_ELBO().loss(model, lambda: None)
    assert not isinstance(caught.value, DeviceMismatchError)
    assert not is_device_mismatch(caught.value)


def test_where_tensors_are_groups_by_device_and_shortens_long_lists():
    params = {f"p{i}": torch.zeros(1) for i in range(8)}
    text = where_tensors_are(params, (torch.zeros(1, device="meta"), 3), {"y": torch.ones(1)})
    assert text == ("cpu: param 'p0', param 'p1', param 'p2', param 'p3', param 'p4', "
                    "param 'p5' and 3 more; meta: argument #0")


def test_a_compiled_step_given_data_on_another_device_raises_and_keeps_compiling():
    """The trace of the new call meets the mix: the same clear error as the eager step,
    and the compiled step is not given up for good."""
    model, guide = regression("cpu")
    x, y = torch.randn(5, 3), torch.randn(5)
    elbo = JitTrace_ELBO(backend="eager")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), elbo)
    for _ in range(3):
        svi.step(x, y)
    with pytest.raises(DeviceMismatchError):
        svi.step(x.to("meta"), y.to("meta"))
    svi.step(x, y)
    assert svi._stepper.dynamic_reason is None and svi.compiles == 1
