"""The CPU matmul rewrites applied before inductor: which products change, and that the
rewritten graph computes the same numbers."""

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_svi_ext.compile.matmul_choices import cpu_matmul_choices

aten = torch.ops.aten


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def _mlp(x, w0, b0, w1):
    return torch.tanh(torch.addmm(b0, x, w0)) @ w1


@pytest.mark.parametrize("rows, cols, rewritten", [
    (10000, 10, True),   # a regression's design matrix: BLAS
    (1000, 10, False),   # small: inductor's own reduction
    (100000, 3, False),  # narrow: inductor's own reduction
])
def test_large_matrix_vector_products_go_to_blas(rows, cols, rewritten):
    x, w = torch.randn(rows, cols), torch.randn(cols)
    gm = make_fx(lambda x, w: torch.mv(x, w).square().sum())(x, w)
    new = cpu_matmul_choices(gm)
    assert (aten.mv.default not in _targets(new)) is rewritten
    assert (aten.mm.default in _targets(new)) is rewritten
    assert (new is gm) is not rewritten
    torch.testing.assert_close(new(x, w), gm(x, w), rtol=1e-5, atol=1e-3)


def test_small_matrix_products_are_fused_and_large_ones_kept():
    x, w0, b0, w1 = torch.randn(64, 10), torch.randn(10, 32), torch.randn(32), torch.randn(32, 4)
    gm = make_fx(_mlp)(x, w0, b0, w1)
    new = cpu_matmul_choices(gm)
    assert aten.addmm.default not in _targets(new) and aten.mm.default not in _targets(new)
    assert _targets(new).count(aten.sum.dim_IntList) == 2
    torch.testing.assert_close(new(x, w0, b0, w1), gm(x, w0, b0, w1))

    big = torch.randn(128, 128)
    gm = make_fx(torch.mm)(big, big)
    assert cpu_matmul_choices(gm) is gm  # 128^3 multiply-adds: BLAS is faster
    gm = make_fx(torch.mm)(torch.randn(128, 10), torch.randn(10, 32))
    assert cpu_matmul_choices(gm) is gm  # 40,960: over the limit (the VAE's lose at 2^17)
    gm = make_fx(torch.mm)(torch.randn(64, 10), torch.randn(10, 32))
    assert cpu_matmul_choices(gm, fuse_small_mm=False) is gm


def test_vector_shaped_and_non_cpu_products_are_left_alone():
    gm = make_fx(torch.mm)(torch.randn(64, 10), torch.randn(10, 1))  # an mv in disguise
    assert cpu_matmul_choices(gm) is gm
    meta = make_fx(torch.mm, tracing_mode="fake")(torch.randn(8, 4), torch.randn(4, 8))
    for node in meta.graph.nodes:
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            node.meta["val"] = value.to("meta")
    assert cpu_matmul_choices(meta) is meta
