"""The graph passes: on every traced step (``simplify``) and for the op-by-op backends
(``fewer_ops``): smaller graphs, same numbers, the same random draws."""

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_svi_ext.compile.graph_passes import fewer_ops, simplify


def _ops(gm, name: str) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and name in str(n.target))


def _traced(fn, *inputs):
    return make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)


def test_repeated_expressions_are_computed_once():
    def f(x):
        a = (x * 2).exp().sum(-1)
        b = (x * 2).exp().sum(-1)
        return a + b

    x = torch.randn(3, 4)
    gm = _traced(f, x)
    assert _ops(gm, "exp") == 2
    simplify(gm)
    assert _ops(gm, "exp") == 1 and _ops(gm, "mul") == 1
    torch.testing.assert_close(gm(x), f(x))


def test_constants_are_folded_and_shared():
    scale = torch.tensor(1.0)

    def f(x):
        # what Normal(loc, 1.0).log_prob repeats per site: ops on a constant scale
        return sum(-((x[i] - 1.0) ** 2) / (2 * scale.expand(4) ** 2) - scale.expand(4).log()
                   for i in range(5))

    x = torch.randn(5, 4)
    gm = _traced(f, x)
    before = len(gm.graph.nodes)
    simplify(gm)
    assert _ops(gm, "lift_fresh") == 0 and _ops(gm, "log") == 0
    folded = [n for n in gm.graph.nodes if n.op == "get_attr" and "folded" in n.target]
    assert 1 <= len(folded) <= 2  # 2 * scale**2 and log(scale): shared by all 5 sites
    assert len(gm.graph.nodes) < before - 15
    torch.testing.assert_close(gm(x), f(x))


def test_random_draws_are_never_merged_or_dropped():
    def f(x):
        a = torch.randn(4) + x
        b = torch.randn(4) + x
        torch.randn(4)  # unused: still drawn, so later draws stay in step with eager
        c = torch.empty(4).normal_() + x  # an in-place draw into a fresh buffer
        d = torch.empty(4).normal_() + x
        return a, b, c, d, torch.rand(4)

    x = torch.zeros(4)
    gm = simplify(_traced(f, x))
    torch.manual_seed(0)
    want = f(x)
    torch.manual_seed(0)
    got = gm(x)
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w)
    assert not torch.equal(got[0], got[1]) and not torch.equal(got[2], got[3])


def test_reads_around_an_in_place_write_are_not_merged():
    def f(x):
        buf = torch.zeros(4)
        first = buf + x
        buf.add_(1.0)
        second = buf + x
        return first, second

    x = torch.ones(4)
    got = simplify(_traced(f, x))(x)
    torch.testing.assert_close(got[0], torch.ones(4))
    torch.testing.assert_close(got[1], torch.full((4,), 2.0))


def test_int_and_float_arguments_stay_apart():
    def f(x):
        return x + 1, x + 1.0

    x = torch.arange(4)
    a, b = simplify(_traced(f, x))(x)
    assert a.dtype == torch.int64 and b.dtype == torch.float32


def test_repeated_per_site_arithmetic_runs_as_one_stacked_op():
    locs = torch.randn(4)

    def f(data, locs):
        # an unrolled model: the same log-density per time step, then a running total
        total = torch.zeros(4)
        for t in range(data.shape[0]):
            total = total + (-((data[t] - locs) ** 2) / 2.0 - 0.5).exp()
        return total

    data = torch.randn(12, 4)
    gm = _traced(f, data, locs)
    assert _ops(gm, "exp") == 12
    gm = fewer_ops(simplify(gm))
    assert _ops(gm, "exp") == 1 and _ops(gm, "pow") == 1 and _ops(gm, "stack") == 1
    # the running total over the stacked rows is one sum (plus the zeros it starts from)
    assert _ops(gm, "aten.add") == 1 and _ops(gm, "aten.sum") == 1
    torch.testing.assert_close(gm(data, locs), f(data, locs))


def test_ops_that_read_each_other_are_not_batched_together():
    def f(x):
        for _ in range(6):
            x = x.exp().neg()  # a chain of identical ops
        return x

    x = torch.randn(3)
    gm = fewer_ops(simplify(_traced(f, x)))
    assert _ops(gm, "stack") == 0 and _ops(gm, "exp") == 6
    torch.testing.assert_close(gm(x), f(x))


def test_batching_keeps_dtypes_of_zero_dim_arguments():
    def f(x, s):
        # a float64 0-dim tensor does not promote a float32 tensor; stacked, it would
        return [x[i] * s for i in range(5)]

    x, s = torch.randn(5, 3), torch.tensor(2.0, dtype=torch.float64)
    got = fewer_ops(simplify(_traced(f, x, s)))(x, s)
    assert all(g.dtype == torch.float32 for g in got)
    torch.testing.assert_close(torch.stack(got), x * 2)


def test_an_in_place_op_on_a_fresh_mask_becomes_out_of_place_and_merges():
    def f(x):
        # what the gradient of a clamp repeats per site
        return [torch.where((x >= 0.1).logical_and_(x <= 0.9), x, 0.0) * i for i in range(4)]

    x = torch.rand(6)
    gm = simplify(_traced(f, x))
    assert _ops(gm, "logical_and_") == 0 and _ops(gm, "ge") == 1 and _ops(gm, "logical_and") == 1
    for g, w in zip(gm(x), f(x), strict=True):
        torch.testing.assert_close(g, w)


def test_gradients_of_per_site_indexing_are_scattered_once():
    def f(p, w):
        idx = torch.arange(4)
        loss = sum((p[idx] * w[t]).sum() + (p[idx.view(4, 1)] * w[t]).sum() for t in range(6))
        return torch.autograd.grad(loss, p)

    p, w = torch.randn(4, requires_grad=True), torch.randn(6, 4)
    gm = _traced(f, p, w)
    assert _ops(gm, "index_put") == 12  # autograd: a zeros, a scatter and an add per use
    gm = fewer_ops(simplify(gm))
    assert _ops(gm, "index_put") == 1
    torch.testing.assert_close(gm(p.detach(), w)[0], f(p, w)[0])


def test_adding_zero_or_scaling_by_one_is_skipped_unless_it_promotes():
    def f(x, n):
        return ((x + 0.0) * 1 / 1 - 0).exp(), (n + 0.0).exp()

    x, n = torch.randn(3), torch.arange(3)
    gm = simplify(_traced(f, x, n))
    assert _ops(gm, "mul") == 0 and _ops(gm, "div") == 0 and _ops(gm, "sub") == 0
    assert _ops(gm, "add") == 1  # the int tensor's: it promotes to float
    for g, w in zip(gm(x, n), f(x, n), strict=True):
        torch.testing.assert_close(g, w)


def _sequential_particles(loc, log_scale, data):
    # RenyiELBO's sequential particles: each draws its noise, then runs its own copy of
    # the same arithmetic, before the next one draws
    weights = []
    for _ in range(8):
        eps = torch.empty(data.shape).normal_()
        z = loc + log_scale.exp() * eps
        weights.append((-((data - z) ** 2) / 2.0).sum() - (-(eps**2) / 2.0).sum(-1))
    return torch.stack(weights).logsumexp(0)


def test_sequential_particles_run_as_one_stacked_computation_with_the_same_draws():
    loc, log_scale, data = torch.randn(()), torch.randn(()), torch.randn(100)
    gm = simplify(_traced(_sequential_particles, loc, log_scale, data))
    assert _ops(gm, "pow") == 16 and _ops(gm, "normal_") == 8
    batched = fewer_ops(gm)
    assert _ops(batched, "normal_") == 8  # every draw, in eager's order
    assert _ops(batched, "pow") == 2 and _ops(batched, "aten.sum") == 2  # one per copy set
    torch.manual_seed(3)
    expected = _sequential_particles(loc, log_scale, data)
    torch.manual_seed(3)
    torch.testing.assert_close(batched(loc, log_scale, data), expected)


def test_sums_over_the_same_dims_are_batched():
    def f(x):
        return [(x[i] * 2.0).sum(-1) for i in range(6)] + [(x[i] + 1.0).sum() for i in range(6)]

    x = torch.randn(6, 5, 3)
    gm = fewer_ops(simplify(_traced(f, x)))
    assert _ops(gm, "aten.sum") == 2
    for got, want in zip(gm(x), f(x), strict=True):
        torch.testing.assert_close(got, want)


def test_a_reader_is_not_moved_across_a_write_to_what_it_reads():
    def f(buf):
        out = []
        for i in range(4):
            eps = torch.empty(3).normal_()
            out.append((buf * eps).exp())  # reads buf, which changes after the second
            if i == 1:
                buf.add_(1.0)
        return out

    buf = torch.randn(3)
    gm = simplify(_traced(f, buf.clone()))
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    for node in gm.graph.nodes:  # every copy reads the input itself, as a recorder writes it
        if node.op == "call_function" and "add_" in str(node.target):
            node.replace_all_uses_with(placeholder, lambda user: user.op != "output")
    gm.recompile()
    gm = fewer_ops(gm)
    torch.manual_seed(0)
    expected, eager_buf = f(buf.clone()), buf + 1.0
    torch.manual_seed(0)
    mine = buf.clone()
    for got, want in zip(gm(mine), expected, strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(mine, eager_buf)


def test_a_stacked_copy_reads_rows_of_earlier_stacks_without_unstacking_them():
    loc, log_scale, data = torch.randn(()), torch.randn(()), torch.randn(100)
    batched = fewer_ops(simplify(_traced(_sequential_particles, loc, log_scale, data)))
    # the draws are stacked once; from there the stacked tensor is passed on, to the
    # model's own stack of the weights too, never unbound and stacked again
    assert _ops(batched, "stack") == 1 and _ops(batched, "unbind") == 0


def test_rows_wanted_in_another_order_are_gathered_from_the_stacked_tensor():
    def f(x):
        a = [(x[i] * 2.0).exp() for i in range(8)]
        b = [(x[i] * 3.0).exp() for i in range(8)]
        return [a[i] + b[7 - i] for i in range(8)]  # b's rows in reverse

    x = torch.randn(8, 3)
    gm = fewer_ops(simplify(_traced(f, x)))
    assert _ops(gm, "index_select") == 1 and _ops(gm, "aten.add") == 1
    for got, want in zip(gm(x), f(x), strict=True):
        torch.testing.assert_close(got, want)


def test_a_running_total_of_stacked_rows_is_a_sum_over_them():
    def f(x):
        a = [(x[i] * 2.0).exp() for i in range(8)]
        b = [(x[i] * 3.0).sin() for i in range(8)]
        # each particle adds two terms to a shared gradient, in turn; every other row
        both = a[0] + b[0]
        for i in range(1, 8):
            both = both + a[i] + b[i]
        odd = a[1] + a[3] + a[5] + a[7]
        return both, odd, torch.stack([b[7 - i] for i in range(8)])  # rows reversed

    x = torch.randn(8, 3)
    gm = fewer_ops(simplify(_traced(f, x)))
    assert _ops(gm, "aten.sum") == 3 and _ops(gm, "aten.add") == 1
    assert _ops(gm, "index_select") == 1 and _ops(gm, "unbind") == 0
    for got, want in zip(gm(x), f(x), strict=True):
        torch.testing.assert_close(got, want)


def test_a_folded_constant_with_stride_zero_is_hashed_and_kept():
    """An ``expand``-ed 0-dim constant folds to a shape-(1,) tensor of stride 0 (Neal's
    funnel under ``AutoStructured`` makes one); hashing its bytes must not need
    ``view(torch.uint8)`` on it, nor on a portable graph's copy of it."""
    from pyro_svi_ext.compile.background import cache_marker, portable

    scale = torch.tensor(2.0)

    def f(x):
        return x * scale.expand(1), x + scale.expand(1)

    x = torch.randn(3)
    gm = _traced(f, x)
    simplify(gm)
    folded = [getattr(gm, n.target) for n in gm.graph.nodes if n.op == "get_attr"]
    assert any(t.stride() == (0,) for t in folded)  # the case under test is built
    torch.testing.assert_close(gm(x), f(x))
    assert _ops(gm, "expand") == 0 and len(folded) == 1  # folded once, shared
    assert cache_marker("inductor", portable(gm), [x]).name


def test_a_pass_that_changes_a_traced_graph_stops_the_suite(monkeypatch):
    """The suite checks every simplified graph against its unsimplified self
    (``tests/conftest.py`` turns the check on): a wrong pass raises, it does not fall
    back to eager quietly."""
    import pyro
    import pyro.distributions as dist
    import pyro.optim
    import pytest

    import pyro_svi_ext
    from pyro_svi_ext.compile import tracer
    from pyro_svi_ext.compile.verify import CHECK_PASSES, GraphPassError

    assert CHECK_PASSES[0]

    def wrong(gm):  # a pass bug: every multiplication becomes an addition
        for node in gm.graph.nodes:
            if node.target == torch.ops.aten.mul.Tensor:
                node.target = torch.ops.aten.add.Tensor
        gm.recompile()
        return gm

    monkeypatch.setattr(tracer, "simplify", wrong)

    def model(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc * 2.0, 1.0), obs=x)

    svi = pyro_svi_ext.SVI(model, lambda x: None, pyro.optim.Adam({"lr": 0.1}),
                           pyro_svi_ext.JitTrace_ELBO(backend="eager"))
    svi.step(torch.ones(3))
    with pytest.raises(GraphPassError):
        svi.step(torch.ones(3))
