"""The CUDA tier: every estimator, eager and compiled, on a device, against the same
program on the CPU; compiled steps that never wait for the device; the background
compile; two devices mixed; ``DistributedSVI`` over NCCL in a world of one.

The device is ``$PYRO_SVI_EXT_TEST_DEVICE`` (default ``cuda``: the tier is skipped where
no CUDA device exists); ``PYRO_SVI_EXT_TEST_DEVICE=cpu`` runs it on the CPU, which is how
``benchmarks/gpu/check.sh --cpu`` rehearses it. Compiled steps use
``$PYRO_SVI_EXT_TEST_BACKEND`` (default ``inductor``).

Same draws on two devices: inside :func:`cpu_draws`, Normal, Bernoulli, categorical and
subsample draws come from the CPU generator and are moved to the device, so a run on the
device draws what the same run on the CPU draws. Runs on two devices are compared after
SGD steps (Adam's first steps turn a gradient of 1e-9 into a full step of either sign);
compiled and eager steps on one device, with Adam (its state is part of the compiled
step).
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
import torch.distributed as torch_dist
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoNormal
from svi_runs import SviRun, assert_same_run, compiled_step, run_svi
from test_device_errors import regression

import pyro_svi_ext
from pyro_svi_ext import SVI, EmpiricalMarginal, Importance, TracePredictive
from pyro_svi_ext.compile.cuda_graphs import GraphReplay
from pyro_svi_ext.errors import DeviceMismatchError

DEVICE = os.environ.get("PYRO_SVI_EXT_TEST_DEVICE", "cuda")
BACKEND = os.environ.get("PYRO_SVI_EXT_TEST_BACKEND", "inductor")
ON_CUDA = torch.device(DEVICE).type == "cuda"

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(),
                       reason="no CUDA device on this machine (PYRO_SVI_EXT_TEST_DEVICE=cpu "
                              "runs this tier on the CPU)"),
]


# --- same draws on every device ---------------------------------------------------------
def _moved(draw, target):
    return draw if target is None else draw.to(target)


@contextmanager
def cpu_draws():
    """Draws of Normal (``rsample`` and ``sample``), Bernoulli, Categorical and a
    plate's subsample made by the CPU generator, then moved to their device."""
    normal, bernoulli, multinomial = torch.normal, torch.bernoulli, torch.multinomial
    randperm, standard = torch.randperm, torch.distributions.normal._standard_normal

    def on_cpu(draw):
        def drawn(*args, **kwargs):
            tensors = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a)]
            target = kwargs.pop("device", None) or next(
                (t.device for t in tensors if t.device.type != "cpu"), None)
            args = [a.cpu() if torch.is_tensor(a) else a for a in args]
            kwargs = {k: v.cpu() if torch.is_tensor(v) else v for k, v in kwargs.items()}
            return _moved(draw(*args, **kwargs), target)
        return drawn

    def standard_on_cpu(shape, dtype, device):
        return standard(shape, dtype=dtype, device="cpu").to(device)

    patched = {"normal": on_cpu(normal), "bernoulli": on_cpu(bernoulli),
               "multinomial": on_cpu(multinomial), "randperm": on_cpu(randperm)}
    originals = {name: getattr(torch, name) for name in patched}
    try:
        for name, fn in patched.items():
            setattr(torch, name, fn)
        torch.distributions.normal._standard_normal = standard_on_cpu
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch, name, fn)
        torch.distributions.normal._standard_normal = standard


# --- the programs -----------------------------------------------------------------------
def _data(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def subsampled_plates(device):
    """Nested plates, the inner one subsampled, per-datum latents whose guide params are
    indexed by the subsample."""
    N, B, D = 20, 8, 3
    x = _data(N, D).to(device)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(D, 1, device=device), 1.0)
                         .to_event(2))
        with pyro.plate("features", D, dim=-2, device=device), \
                pyro.plate("data", N, subsample_size=B, dim=-1, device=device) as idx:
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx].T)

    def guide(x):
        mu_loc = pyro.param("mu_loc", torch.zeros(D, 1, device=device))
        z_loc = pyro.param("z_loc", torch.zeros(D, N, device=device))
        z_scale = pyro.param("z_scale", torch.ones(D, N, device=device),
                             constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(mu_loc, 1.0).to_event(2))
        with pyro.plate("features", D, dim=-2, device=device), \
                pyro.plate("data", N, subsample_size=B, dim=-1, device=device) as idx:
            pyro.sample("z", dist.Normal(z_loc[:, idx], z_scale[:, idx]))

    return model, guide, (x,)


def blr_model(x, y):
    device = x.device
    w = pyro.sample("w", dist.Normal(torch.zeros(3, device=device), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, device=device), 10.0))
    with pyro.plate("data", x.shape[0], device=device):
        pyro.sample("y", dist.Normal(x @ w + b, 0.5), obs=y)


def blr_autonormal(device):
    x = _data(50, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.5 * _data(50, seed=1)
    return blr_model, AutoNormal(blr_model), (x.to(device), y.to(device))


def network_guide(device):
    """A guide whose ``nn.Module`` encoder (``pyro.module``) gives per-datum latents."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, 4)).to(device)
    data = _data(16, 4).to(device)

    def model(data):
        weight = pyro.param("decoder", 0.1 * torch.ones(2, 4, device=device))
        with pyro.plate("data", data.shape[0], device=device):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, device=device), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ weight, 1.0).to_event(1), obs=data)

    def guide(data):
        pyro.module("encoder", net)
        out = net(data)
        loc, scale = out[:, :2], torch.nn.functional.softplus(out[:, 2:])
        with pyro.plate("data", data.shape[0], device=device):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide, (data,)


def bernoulli_baselines(device):
    """Global and per-datum Bernoulli latents with decaying-average baselines."""
    x = torch.linspace(-1.0, 2.0, 8, device=device)
    baseline = {"baseline": {"use_decaying_avg_baseline": True}}

    def model(x):
        s = pyro.sample("s", dist.Bernoulli(torch.tensor(0.4, device=device)))
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, device=device), 1.0))
        with pyro.plate("data", 8, device=device):
            k = pyro.sample("k", dist.Bernoulli(0.3 + 0.3 * s))
            pyro.sample("x", dist.Normal(mu + k + s, 1.0), obs=x)

    def guide(x):
        ps = pyro.param("ps", torch.tensor(0.6, device=device),
                        constraint=constraints.unit_interval)
        pk = pyro.param("pk", torch.full((8,), 0.5, device=device),
                        constraint=constraints.unit_interval)
        loc = pyro.param("mu_loc", torch.tensor(0.0, device=device))
        pyro.sample("s", dist.Bernoulli(ps), infer=baseline)
        pyro.sample("mu", dist.Normal(loc, 1.0))
        with pyro.plate("data", 8, device=device):
            pyro.sample("k", dist.Bernoulli(pk), infer=baseline)

    return model, guide, (x,)


def gmm(device):
    """Mixture assignments enumerated in the model; params only (an empty guide)."""
    data = torch.cat([_data(10) - 2.0, _data(10, seed=1) + 2.0]).to(device)

    def model(data):
        weights = pyro.param("weights", torch.full((2,), 0.5, device=device),
                             constraint=constraints.simplex)
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0], device=device))
        scale = pyro.param("scale", torch.tensor(1.0, device=device),
                           constraint=constraints.positive)
        with pyro.plate("data", len(data), device=device):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[z], scale), obs=data)

    return model, lambda data: None, (data,)


def hmm(device, k: int = 3, t: int = 6, sequences: int = 4):
    """A batch of sequences, hidden states enumerated under ``pyro.markov``."""
    data = (_data(t, sequences) + torch.arange(t).remainder(k).float()[:, None]).to(device)

    def model(data):
        trans = pyro.param("trans", torch.ones(k, k, device=device) / k
                           + torch.eye(k, device=device), constraint=constraints.simplex)
        locs = pyro.param("locs", torch.arange(k, device=device).float())
        with pyro.plate("sequences", data.shape[1], dim=-1, device=device):
            x = 0
            for i in pyro.markov(range(data.shape[0])):
                x = pyro.sample(f"x_{i}", dist.Categorical(trans[x]),
                                infer={"enumerate": "parallel"})
                pyro.sample(f"y_{i}", dist.Normal(locs[x], 1.0), obs=data[i])

    return model, lambda data: None, (data,)


def hierarchical(device, n: int = 10):
    """Global ``mu``, local ``z`` in a plate: RenyiELBO's model."""
    x = (1.5 + _data(n)).to(device)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, device=device), 5.0))
        with pyro.plate("data", n, device=device):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(x):
        mu_loc = pyro.param("mu_loc", torch.tensor(0.0, device=device))
        z_loc = pyro.param("z_loc", torch.zeros(n, device=device))
        z_scale = pyro.param("z_scale", torch.ones(n, device=device),
                             constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(mu_loc, 1.0))
        with pyro.plate("data", n, device=device):
            pyro.sample("z", dist.Normal(z_loc, z_scale))

    return model, guide, (x,)


#: name: (program, estimator, its arguments)
PROGRAMS = {
    "trace_subsampled_plates": (subsampled_plates, "Trace_ELBO", {}),
    "trace_autonormal": (blr_autonormal, "Trace_ELBO", {"num_particles": 2}),
    "trace_network_guide": (network_guide, "Trace_ELBO", {}),
    "tracegraph_baselines": (bernoulli_baselines, "TraceGraph_ELBO", {}),
    "traceenum_gmm": (gmm, "TraceEnum_ELBO", {"max_plate_nesting": 1}),
    "traceenum_markov_hmm": (hmm, "TraceEnum_ELBO", {"max_plate_nesting": 1}),
    "renyi": (hierarchical, "RenyiELBO", {"alpha": 0.5, "num_particles": 3}),
}


class Program:
    """A program built on ``device`` (what :func:`run_svi` builds)."""

    def __init__(self, name: str, device: str):
        self.build_on, self.estimator, self.kwargs = PROGRAMS[name]
        self.device = device

    def build(self):
        return self.build_on(self.device)

    def elbo(self, compiled: bool = False):
        if compiled:
            return getattr(pyro_svi_ext, "Jit" + self.estimator)(
                backend=BACKEND, background_compile=False, **self.kwargs)
        return getattr(pyro_svi_ext, self.estimator)(**self.kwargs)


def on_cpu(run: SviRun) -> SviRun:
    return SviRun(run.losses, {k: v.cpu() for k, v in run.params.items()}, run.optim_state)


def assert_on_device(run: SviRun) -> None:
    kind = torch.device(DEVICE).type
    assert {v.device.type for v in run.params.values()} == {kind}
    for state in run.optim_state.values():
        for value in state["state"].get(0, {}).values():
            assert not torch.is_tensor(value) or value.device.type == kind


def sgd():
    return pyro.optim.SGD({"lr": 0.01})


# --- compiled steps: no host sync, state on the device, CUDA graphs ---------------------
@contextmanager
def no_host_reads(monkeypatch):
    """Any read of a tensor on the host raises (and, on CUDA, any synchronization)."""
    def host_read(*args, **kwargs):
        raise AssertionError("the step read a tensor on the host")

    with monkeypatch.context() as m:
        for name in ("item", "__float__", "__bool__", "tolist"):
            m.setattr(torch.Tensor, name, host_read)
        if ON_CUDA:
            torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            if ON_CUDA:
                torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("backend", [BACKEND, "cudagraphs"])
def test_compiled_steps_never_wait_for_the_device_and_keep_their_state_there(
        backend, monkeypatch):
    if backend == "cudagraphs" and not ON_CUDA:
        pytest.skip("CUDA graphs need a CUDA device")
    case = Program("trace_autonormal", DEVICE)

    def lazy_run(elbo):
        pyro.clear_param_store()
        model, guide, args = case.build()
        pyro.set_rng_seed(0)
        optim = pyro.optim.Adam({"lr": 0.05})
        svi = SVI(model, guide, optim, elbo)
        # eager, trace and compile, then (CUDA graphs) two warm-up calls and the capture
        losses = [svi.step(*args) for _ in range(5)]
        with no_host_reads(monkeypatch):
            lazy = [svi.step_tensor(*args) for _ in range(10)]
        assert {t.device.type for t in lazy} == {torch.device(DEVICE).type}
        losses += [float(t) for t in lazy]
        params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
        return SviRun(losses, params, optim.get_state())

    elbo = pyro_svi_ext.JitTrace_ELBO(backend=backend, background_compile=False,
                                      num_particles=2)
    ours = lazy_run(elbo)
    assert_on_device(ours)
    (graph,) = compiled_step(elbo).graphs.graphs.values()
    if backend == "cudagraphs":
        assert isinstance(graph.run, GraphReplay), "inputs not all on the device?"
        assert graph.run.captures == 1 and graph.run.reason is None, graph.run.reason
    eager = run_svi(case.elbo(), case, pyro.optim.Adam({"lr": 0.05}), steps=15)
    assert_same_run(ours, eager, rtol=1e-4, atol=1e-5)


# --- every estimator, eager: the device against the CPU ---------------------------------
@pytest.mark.parametrize("name", PROGRAMS)
def test_eager_steps_on_the_device_equal_the_cpu_steps(name):
    with cpu_draws():
        on_device = run_svi(Program(name, DEVICE).elbo(), Program(name, DEVICE), sgd(),
                            steps=3)
        cpu = run_svi(Program(name, "cpu").elbo(), Program(name, "cpu"), sgd(), steps=3)
    assert_on_device(on_device)
    assert_same_run(on_cpu(on_device), cpu, rtol=1e-4, atol=1e-5, optimizer_state=False)


def test_importance_and_predictive_on_the_device_equal_the_cpu_ones():
    def run(device):
        data = torch.tensor([0.9, 1.4, 1.1, 0.7, 1.3], device=device)

        def model(data=None, n=5):
            mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, device=device), 1.0))
            with pyro.plate("data", n, device=device):
                return pyro.sample("obs", dist.Normal(mu, 0.5), obs=data)

        pyro.set_rng_seed(0)
        with cpu_draws():
            posterior = Importance(model, guide=None, num_samples=400).run(data)
            mu = EmpiricalMarginal(posterior, sites="mu")
            predictive = TracePredictive(model, posterior, num_samples=50).run(None, 5)
            draws = EmpiricalMarginal(predictive).sample((20,))
        return posterior.get_log_normalizer(), mu.mean, mu.variance, draws

    on_device, cpu = run(DEVICE), run("cpu")
    assert on_device[3].device.type == torch.device(DEVICE).type
    assert float(on_device[0]) == pytest.approx(float(cpu[0]), rel=1e-4)
    for ours, theirs in zip(on_device[1:], cpu[1:], strict=True):
        torch.testing.assert_close(ours.cpu(), theirs, rtol=1e-4, atol=1e-5)


# --- two devices mixed ------------------------------------------------------------------
@pytest.mark.parametrize("params_on_the_device", [True, False])
def test_data_and_params_on_two_devices_raise_naming_the_site(params_on_the_device):
    other = "cpu" if DEVICE != "cpu" else "meta"  # on the CPU, meta stands in
    param_device, data_device = ((DEVICE, other) if params_on_the_device
                                 else (other, DEVICE))
    if "meta" in (param_device, data_device):
        pyro.enable_validation(False)  # Pyro's checks read values, which meta has not
    model, guide = regression(param_device)
    x, y = torch.randn(5, 3).to(data_device), torch.randn(5).to(data_device)
    for elbo in (pyro_svi_ext.Trace_ELBO(), pyro_svi_ext.JitTrace_ELBO(backend=BACKEND)):
        pyro.clear_param_store()
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), elbo)
        with pytest.raises(DeviceMismatchError) as caught:
            svi.step(x, y)
        text = str(caught.value)
        assert "in the model, after its sample site 'w'" in text
        assert f"{torch.device(param_device)}: param 'loc'" in text.replace("cuda:0", "cuda")
        assert not list(pyro.get_param_store().keys())


# --- DistributedSVI ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_svi_and_its_collectives_in_a_world_of_one(monkeypatch):
    """NCCL on CUDA (gloo on the CPU): the package's group (gloo beside NCCL for the
    CPU flags) sums, gathers and broadcasts; DistributedSVI equals SVI."""
    from pyro_svi_ext.infer.collectives import Group, group_backend, write_back
    from pyro_svi_ext.infer.distributed import DistributedSVI

    backend = "nccl" if ON_CUDA else "gloo"
    if backend == "nccl" and not torch_dist.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    if torch_dist.is_initialized():
        pytest.skip("a process group is already initialized")
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    torch_dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}",
                                  rank=0, world_size=1)
    try:
        comm = Group(timeout=60.0)
        assert comm.world == 1
        comm.group = torch_dist.new_group(backend=group_backend(torch_dist.get_backend()))
        assert comm.header(False, 12345, torch.device("cpu")) == (False, False)
        a, b = torch.ones(3, device=DEVICE), torch.full((2,), 2.0, device=DEVICE)
        write_back(comm.sum_flat([a, b]))
        assert a.tolist() == [1.0, 1.0, 1.0] and b.tolist() == [2.0, 2.0]
        assert comm.gather(("rank", 0)) == [("rank", 0)]
        assert comm.broadcast_([a]) is False
        case = Program("trace_autonormal", DEVICE)
        runs = [run_svi(pyro_svi_ext.Trace_ELBO(), case, steps=4, svi_cls=cls)
                for cls in (SVI, DistributedSVI)]
        assert_on_device(runs[1])
        assert_same_run(runs[1], runs[0], rtol=0, atol=0)
    finally:
        torch_dist.destroy_process_group()


# --- compiled programs last: their compiles take most of the tier's time ----------------
@pytest.mark.parametrize("name", PROGRAMS)
def test_compiled_steps_on_the_device_equal_the_eager_steps(name):
    case = Program(name, DEVICE)
    elbo = case.elbo(compiled=True)
    ours = run_svi(elbo, case, steps=5)
    assert compiled_step(elbo).graphs, compiled_step(elbo).dynamic_reason
    assert_on_device(ours)
    assert_same_run(ours, run_svi(case.elbo(), case, steps=5), rtol=1e-4, atol=1e-5)


# --- the background compile ---------------------------------------------------------------
def test_a_background_compile_and_a_warm_start_on_the_device():
    """The compile child works on the device's graph; a second estimator compiles the
    same step again from the cache the first filled; both runs equal the blocking one
    when the switch-over step is the same."""
    case = Program("trace_autonormal", DEVICE)

    def fit(elbo, wait_after=None):
        pyro.clear_param_store()
        model, guide, args = case.build()
        pyro.set_rng_seed(0)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
        losses = []
        for i in range(8):
            losses.append(svi.step(*args))
            if wait_after == i + 1:
                assert svi.wait_for_compiles(300)
        assert svi.compiles == 1
        return losses, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    blocking = fit(pyro_svi_ext.JitTrace_ELBO(backend=BACKEND, background_compile=False,
                                              num_particles=2))
    for _ in range(2):  # cold, then warm
        losses, params = fit(pyro_svi_ext.JitTrace_ELBO(backend=BACKEND, num_particles=2),
                             wait_after=2)
        assert losses == pytest.approx(blocking[0], rel=1e-5)
        for name, value in blocking[1].items():
            torch.testing.assert_close(params[name], value, rtol=1e-5, atol=1e-6)
            assert params[name].device.type == torch.device(DEVICE).type
