"""Drop-in fidelity: the switch, and unchanged Pyro programs getting Pyro's answers."""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pyro.infer
import pyro.infer.trace_elbo
import pyro.optim
import pytest
import torch
from pyro.infer.autoguide import (
    AutoHierarchicalNormalMessenger,
    AutoNormalMessenger,
    AutoRegressiveMessenger,
)

import pyro_svi_ext
from pyro_svi_ext import dropin


def test_install_rebinds_pyro_infer_and_uninstall_restores_it():
    theirs = pyro.infer.Trace_ELBO
    with dropin.installed():
        assert pyro.infer.Trace_ELBO is pyro_svi_ext.Trace_ELBO
        assert pyro.infer.trace_elbo.Trace_ELBO is pyro_svi_ext.Trace_ELBO
        assert pyro.infer.SVI is pyro_svi_ext.SVI
        assert pyro.infer.traceenum_elbo.BackwardSampleMessenger is \
            pyro_svi_ext.BackwardSampleMessenger
        with dropin.installed():  # nested: the outer block still holds the switch
            pass
        assert dropin.is_installed()
    assert pyro.infer.Trace_ELBO is theirs
    assert not dropin.is_installed()


def test_pyro_classes_are_kept_for_comparison():
    assert dropin.PYRO_CLASSES["Trace_ELBO"].__module__ == "pyro.infer.trace_elbo"
    with dropin.installed():
        assert dropin.PYRO_CLASSES["SVI"].__module__ == "pyro.infer.svi"


# --- one network registered under two names ---------------------------------------------
def _shared_network_pair():
    torch.manual_seed(5)
    net = torch.nn.Linear(3, 2)
    x = torch.randn(6, 3)
    y = torch.randn(6, 2)

    def model(x, y):
        pyro.module("dec", net)
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(net(x) + z, 1.0).to_event(1), obs=y)

    def guide(x, y):
        pyro.module("enc", net)
        pyro.sample("z", dist.Normal(net(x).mean(0), 0.5).to_event(1))

    return net, model, guide, (x, y)


def _fit_shared(svi_cls, elbo, optim, steps=20):
    pyro.clear_param_store()
    net, model, guide, args = _shared_network_pair()
    before = net.weight.detach().clone()
    pyro.set_rng_seed(0)
    svi = svi_cls(model, guide, optim, elbo)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even torch's "duplicate parameters" warning
        losses = [svi.step(*args) for _ in range(steps)]
    return losses, before, [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("optim", [lambda: pyro.optim.Adam({"lr": 0.05}),
                                   lambda: pyro.optim.ClippedAdam({"lr": 0.05})],
                         ids=["Adam", "ClippedAdam"])
@pytest.mark.parametrize("ours", [lambda: pyro_svi_ext.Trace_ELBO(),
                                  lambda: pyro_svi_ext.JitTrace_ELBO(backend="eager")],
                         ids=["eager", "compiled"])
def test_a_network_under_two_names_is_stepped_once_per_step_as_in_pyro(optim, ours):
    mine = _fit_shared(pyro_svi_ext.SVI, ours(), optim())
    theirs = _fit_shared(pyro.infer.SVI, pyro.infer.Trace_ELBO(), optim())
    torch.testing.assert_close(mine[0], theirs[0], rtol=1e-6, atol=1e-6)
    for a, b in zip(mine[2], theirs[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.equal(mine[2][0], mine[1])  # it did move


# --- arguments Pyro 1.8.6-1.9.2 accept -------------------------------------------------
@pytest.mark.parametrize("name", ["Trace_ELBO", "TraceGraph_ELBO", "TraceEnum_ELBO",
                                  "JitTrace_ELBO", "JitTraceGraph_ELBO", "JitTraceEnum_ELBO"])
def test_pyro_19_arguments_are_accepted_and_kept(name):
    elbo = getattr(pyro_svi_ext, name)(ignore_jit_warnings=True,
                                       jit_options={"check_trace": False},
                                       tail_adaptive_beta=-0.5, retain_graph=True)
    assert elbo.ignore_jit_warnings is True
    assert elbo.jit_options == {"check_trace": False}
    assert elbo.tail_adaptive_beta == -0.5
    assert elbo.retain_graph is True


def test_jit_options_must_be_a_dict():
    with pytest.raises(TypeError, match="jit_options"):
        pyro_svi_ext.JitTrace_ELBO(jit_options=["check_trace"])


def test_jit_options_reach_torch_jit_trace(monkeypatch):
    seen = {}
    real = torch.jit.trace

    def spy(fn, inputs, **kwargs):
        seen.update(kwargs)
        return real(fn, inputs, **kwargs)

    monkeypatch.setattr(torch.jit, "trace", spy)
    model, guide, data = _conjugate()
    elbo = pyro_svi_ext.JitTrace_ELBO(backend="jit", ignore_jit_warnings=True,
                                      jit_options={"check_tolerance": 1e-3})
    svi = pyro_svi_ext.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "jit is the legacy path"
        for _ in range(3):
            svi.step(data)
    assert seen == {"check_trace": False, "check_tolerance": 1e-3}


def _conjugate():
    data = torch.tensor([0.9, 1.4, 1.1, 0.7, 1.3])

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(mu, 0.5), obs=data)

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.3))
        scale = pyro.param("scale", torch.tensor(0.7), constraint=dist.constraints.positive)
        pyro.sample("mu", dist.Normal(loc, scale))

    return model, guide, data


def test_jit_trace_elbo_loss_and_surrogate_loss_agrees_with_pyro():
    # Pyro's JitTrace_ELBO draws extra samples while it compiles, so the reference on the
    # same draws is Pyro's Trace_ELBO: the same loss, and the surrogate's gradient
    model, guide, data = _conjugate()

    def run(fn):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        loss, surrogate = fn(model, guide, data)
        (grad,) = torch.autograd.grad(surrogate, [pyro.param("loc").unconstrained()])
        return float(loss.detach()), grad

    ours = run(pyro_svi_ext.JitTrace_ELBO(ignore_jit_warnings=True).loss_and_surrogate_loss)
    pyro_elbo = pyro.infer.Trace_ELBO()
    theirs = run(lambda *a: (pyro_elbo.differentiable_loss(*a),) * 2)
    assert abs(ours[0] - theirs[0]) < 1e-5
    torch.testing.assert_close(ours[1], theirs[1])


# --- max_plate_nesting guessed with vectorized particles -------------------------------
def _mixture():
    data = torch.tensor([-1.1, -0.8, 1.2, 0.9, 1.4])

    @pyro.infer.config_enumerate
    def model(data):
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("points", len(data)):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(locs[z.long()], scale), obs=data)

    def guide(data):
        loc = pyro.param("scale_loc", torch.tensor(0.1))
        pyro.sample("scale", dist.LogNormal(loc, 0.3))

    return model, guide, data


@pytest.mark.parametrize("name", ["TraceEnum_ELBO", "Trace_ELBO"])
def test_vectorized_particles_with_guessed_nesting_agree_with_pyro(name):
    model, guide, data = _mixture()
    if name == "Trace_ELBO":
        model = _plain_model  # nothing to enumerate
    results = []
    for module in (pyro_svi_ext, pyro.infer):
        pyro.clear_param_store()
        pyro.set_rng_seed(2)
        elbo = getattr(module, name)(num_particles=8, vectorize_particles=True)
        loss = elbo.loss_and_grads(model, guide, data)
        grads = {n: p.grad.clone() for n, p in pyro.get_param_store().named_parameters()}
        results.append((loss, grads, elbo.max_plate_nesting))
    (l1, g1, n1), (l2, g2, n2) = results
    assert n1 == n2 == 2
    assert abs(l1 - l2) < 1e-5 * max(1.0, abs(l2))
    assert g1.keys() == g2.keys()
    for k in g2:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-5, atol=1e-6)


def _plain_model(data):
    locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("points", len(data)):
        pyro.sample("x", dist.Normal(locs.mean(), scale), obs=data)


# --- information_criterion ----------------------------------------------------------------
def test_importance_information_criterion_agrees_with_pyro():
    model, guide, data = _conjugate()
    out = []
    for cls in (pyro_svi_ext.Importance, pyro.infer.Importance):
        pyro.clear_param_store()
        pyro.set_rng_seed(4)
        posterior = cls(model, guide, num_samples=50).run(data)
        out.append((posterior.information_criterion(),
                    posterior.information_criterion(pointwise=True)))
    (ours, ours_pw), (theirs, theirs_pw) = out
    assert list(ours) == list(theirs) == ["waic", "p_waic"]
    for key in theirs:
        torch.testing.assert_close(ours[key].double(), theirs[key].double(), rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(ours_pw[key].double(), theirs_pw[key].double(),
                                   rtol=1e-5, atol=1e-5)
        assert ours_pw[key].shape == (len(data),)


def test_information_criterion_needs_one_observed_site_and_traces():
    model, guide, data = _conjugate()
    assert pyro_svi_ext.Importance(model, guide, num_samples=3).information_criterion() == {}

    def two_observed(data):
        model(data)
        pyro.sample("extra", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    posterior = pyro_svi_ext.Importance(two_observed, guide, num_samples=3).run(data)
    with pytest.raises(ValueError, match="one observed site"):
        posterior.information_criterion()


# --- effect-based (messenger) autoguides ----------------------------------------------------
def _regression_with_factor(x, y, log_factor=0.0):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    pyro.factor("f", torch.tensor(log_factor))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(w * x + b, 1.0), obs=y)


@pytest.mark.parametrize("guide_cls", [AutoNormalMessenger, AutoHierarchicalNormalMessenger,
                                       AutoRegressiveMessenger])
@pytest.mark.parametrize("name", ["Trace_ELBO", "TraceGraph_ELBO", "RenyiELBO"])
def test_messenger_autoguides_agree_with_pyro(guide_cls, name):
    torch.manual_seed(0)
    x = torch.randn(8)
    y = 2 * x + 0.3
    out = []
    for module in (pyro_svi_ext, pyro.infer):
        pyro.clear_param_store()
        guide = guide_cls(_regression_with_factor)
        elbo = getattr(module, name)()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "guide sites not in the model: ['obs']"
            pyro.set_rng_seed(3)
            loss5 = elbo.loss_and_grads(_regression_with_factor, guide, x, y, 5.0)
            grads = {n: p.grad.clone() for n, p in pyro.get_param_store().named_parameters()}
            pyro.set_rng_seed(3)
            loss4 = elbo.loss(_regression_with_factor, guide, x, y, 4.0)
        out.append((loss5, loss4, grads))
    (a5, a4, ga), (b5, b4, gb) = out
    assert abs(a5 - b5) < 1e-4 and abs(a4 - b4) < 1e-4
    assert abs((a5 - a4) - (b5 - b4)) < 1e-4
    assert ga.keys() == gb.keys()
    for k in gb:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-5)


# --- subclasses written against Pyro's protected hooks ----------------------------------
def _with_observed_log_q(base):
    class CausalEffect(base):
        """Pyro's CEVAE loss: the ELBO plus log q of the guide's observed sites."""

        def _differentiable_loss_particle(self, model_trace, guide_trace):
            observed = [n for n, s in guide_trace.nodes.items()
                        if s["type"] == "sample" and s["is_observed"]]
            blocked = guide_trace.copy()
            for name in observed:
                del blocked.nodes[name]
            loss, surrogate = super()._differentiable_loss_particle(model_trace, blocked)
            for name in observed:
                log_q = guide_trace.nodes[name]["log_prob_sum"]
                loss = loss - float(log_q)
                surrogate = surrogate - log_q
            return loss, surrogate

    return CausalEffect


def _treatment_pair():
    t_obs = torch.tensor([1.0, 0.0, 1.0])

    def model(t):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3):
            pyro.sample("t", dist.Bernoulli(logits=z), obs=t)

    def guide(t):
        w = pyro.param("w", torch.tensor(0.3))
        with pyro.plate("data", 3):
            pyro.sample("t", dist.Bernoulli(logits=w), obs=t)  # observed in the guide too
        pyro.sample("z", dist.Normal(w, 1.0))

    return model, guide, t_obs


@pytest.mark.filterwarnings("ignore:Found non-auxiliary vars in guide but not model")
@pytest.mark.parametrize("method", ["loss_and_grads", "differentiable_loss", "svi"])
def test_an_override_of_differentiable_loss_particle_is_honoured_like_pyro(method):
    model, guide, t = _treatment_pair()
    out = []
    for base, svi_cls in ((pyro_svi_ext.Trace_ELBO, pyro_svi_ext.SVI),
                          (pyro.infer.Trace_ELBO, pyro.infer.SVI)):
        pyro.clear_param_store()
        pyro.set_rng_seed(7)
        elbo = _with_observed_log_q(base)(num_particles=2)
        if method == "svi":
            svi = svi_cls(model, guide, pyro.optim.Adam({"lr": 0.1}), elbo)
            out.append(([svi.step(t) for _ in range(5)], pyro.param("w").detach()))
            continue
        if method == "differentiable_loss":
            loss = elbo.differentiable_loss(model, guide, t)
            loss.backward()
            loss = float(loss.detach())
        else:
            loss = elbo.loss_and_grads(model, guide, t)
        out.append((loss, pyro.param("w").unconstrained().grad.clone()))
    (ours_loss, ours_w), (their_loss, their_w) = out
    torch.testing.assert_close(torch.tensor(ours_loss), torch.tensor(their_loss))
    torch.testing.assert_close(ours_w, their_w)
    plain = _treatment_pair()
    pyro.set_rng_seed(7)
    assert abs(pyro_svi_ext.Trace_ELBO(num_particles=2).loss(*plain[:2], t)
               - (ours_loss if method != "svi" else ours_loss[0])) > 1e-3  # the override counts


@pytest.mark.parametrize("name", ["TraceGraph_ELBO", "TraceEnum_ELBO", "RenyiELBO"])
def test_an_override_that_is_not_honoured_is_refused_at_construction(name):
    cls = _with_observed_log_q(getattr(pyro_svi_ext, name))
    with pytest.raises(NotImplementedError, match="_differentiable_loss_particle"):
        cls()


def test_pyro_helpers_work_on_the_package_estimators():
    model, guide, data = _conjugate()
    elbo = pyro_svi_ext.Trace_ELBO(num_particles=3, vectorize_particles=True)
    elbo._guess_max_plate_nesting(model, guide, (data,), {})
    assert elbo.max_plate_nesting == 2
    (model_trace, guide_trace), = elbo._get_traces(model, guide, (data,), {})
    assert model_trace.nodes["obs"]["log_prob"].shape == (3, 5)
    assert guide_trace.nodes["mu"]["value"].shape == (3, 1)


def _indexing_model(data):
    locs = pyro.param("locs", torch.tensor([-1.0, 0.0, 1.0]))
    x = pyro.sample("x", dist.Categorical(torch.tensor([0.5, 0.3, 0.2])))
    pyro.sample("obs", dist.Normal(locs[x], 1.0), obs=data)  # a sampled 0-dim index


def _indexing_guide(data):
    q = pyro.param("q", torch.ones(3) / 3, constraint=dist.constraints.simplex)
    pyro.sample("x", dist.Categorical(q))


@pytest.mark.parametrize("ignore", [True, False])
def test_ignore_jit_warnings_turns_the_eager_fallback_notice_into_a_log_record(ignore, caplog):
    elbo = pyro_svi_ext.JitTrace_ELBO(ignore_jit_warnings=ignore, backend="eager")
    svi = pyro_svi_ext.SVI(_indexing_model, _indexing_guide, pyro.optim.Adam({"lr": 0.01}),
                           elbo)
    with warnings.catch_warnings(record=True) as seen, caplog.at_level("INFO"):
        warnings.simplefilter("always")
        for _ in range(3):
            svi.step(torch.tensor(0.5))
    notices = [w for w in seen if "running eagerly" in str(w.message)]
    logged = [r for r in caplog.records if "running eagerly" in r.getMessage()]
    assert (len(notices), len(logged)) == ((0, 1) if ignore else (1, 0))
