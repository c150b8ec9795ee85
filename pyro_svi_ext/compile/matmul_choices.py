"""Which CPU matrix products inductor should fuse and which it should leave to BLAS.

Inductor (torch 2.13) decomposes ``mv`` into a product and a row reduction, and calls
BLAS for every ``mm``/``addmm``. On one CPU thread neither is always right:

- a large ``mv`` (a regression's ``x @ w`` and its gradient ``x.T @ g`` at x:
  (8000, 10)) runs at half speed as a reduction: 65 us against 38 us through BLAS;
- a small ``mm`` (an MLP's (128, 10) @ (10, 32)) costs more in the BLAS call than in the
  arithmetic: a fused product-and-sum takes 0.5-3.5 us less per product.

:func:`cpu_matmul_choices` rewrites the traced graph accordingly before inductor sees it.
Same numbers up to summation order; graphs on other devices are left alone.
"""

from __future__ import annotations

import copy

import torch

aten = torch.ops.aten

#: an ``mv`` goes to BLAS when its matrix has at least this many elements and both of
#: its sides are at least ``BLAS_MV_MIN_SIDE`` (measured, one thread: (4000, 10) 29 us
#: fused against 23 us BLAS; (2000, 10) 15 against 16 us; (100000, 3) 192 against 238 us)
BLAS_MV_MIN_NUMEL = 32768
BLAS_MV_MIN_SIDE = 8
#: an ``mm``/``addmm`` with both output sides > 1 is fused when M * K * N is at most this
#: (measured: (256, 10) @ (10, 32) 9.5 us fused against 10.1 us BLAS; (128, 64) @
#: (64, 64) 29 against 19 us). Whole steps, one thread: at 2^17 the VAE-sized MLP (B=128
#: D=50 H=64 Z=8, products of 65,536 and 131,072) ran 160-167 us against 149-155 without
#: the rule; at 2^15 it runs 148-158, and the amortized MLP guide (B=128 D=10 H=32)
#: 68-70 us against 72-73 without it
FUSED_MM_MAX_WORK = 2 ** 15
_FLOATS = (torch.float32, torch.float64)


def cpu_matmul_choices(gm: torch.fx.GraphModule, fuse_small_mm: bool = True
                       ) -> torch.fx.GraphModule:
    """A copy of ``gm`` with small CPU ``mm``/``addmm`` written as a fused product and
    sum (unless ``fuse_small_mm`` is False), and large CPU ``mv`` as a BLAS ``mm``;
    ``gm`` itself when nothing changes. The rules read each node's recorded tensor
    (``meta["val"]``): a graph rebuilt from portable data has none, and is left as it
    is."""
    chosen = {n.name: rule for n in gm.graph.nodes if (rule := _rule(n)) is not None
              and (fuse_small_mm or rule is _blas_mv)}
    if not chosen:
        return gm
    graph = copy.deepcopy(gm.graph)
    for node in list(graph.nodes):
        rule = chosen.get(node.name) if node.op == "call_function" else None
        if rule is None:
            continue
        with graph.inserting_before(node):
            result = rule(graph, *node.args)
        node.replace_all_uses_with(result)
        graph.erase_node(node)
    return torch.fx.GraphModule(gm, graph)


def _blas_mv(graph: torch.fx.Graph, matrix, vector):
    """``mv(A, v)`` as ``mm(A, v[:, None])[:, 0]``."""
    column = graph.call_function(aten.unsqueeze.default, (vector, 1))
    product = graph.call_function(aten.mm.default, (matrix, column))
    return graph.call_function(aten.squeeze.dim, (product, 1))


def _fused_mm(graph: torch.fx.Graph, left, right):
    """``mm(A, B)`` (A: (M, K), B: (K, N)) as ``(A[:, :, None] * B[None]).sum(1)``."""
    left3 = graph.call_function(aten.unsqueeze.default, (left, 2))
    right3 = graph.call_function(aten.unsqueeze.default, (right, 0))
    product = graph.call_function(aten.mul.Tensor, (left3, right3))
    return graph.call_function(aten.sum.dim_IntList, (product, [1]))


def _fused_addmm(graph: torch.fx.Graph, bias, left, right):
    """``addmm(c, A, B)`` (beta = alpha = 1) as ``c + fused mm(A, B)``."""
    return graph.call_function(aten.add.Tensor, (bias, _fused_mm(graph, left, right)))


def _rule(node: torch.fx.Node):
    """The rewrite for ``node``, or None to leave it to inductor."""
    if node.op != "call_function" or node.kwargs:
        return None
    if node.target is aten.mv.default:
        matrix = _value(node.args[0])
        if matrix is None:
            return None
        rows, cols = matrix.shape
        big = rows * cols >= BLAS_MV_MIN_NUMEL and min(rows, cols) >= BLAS_MV_MIN_SIDE
        return _blas_mv if big else None
    if node.target is aten.mm.default:
        operands, rule = node.args, _fused_mm
    elif node.target is aten.addmm.default and len(node.args) == 3:
        operands, rule = node.args[1:], _fused_addmm
    else:
        return None
    left, right = (_value(a) for a in operands)
    if left is None or right is None or left.dtype != right.dtype:
        return None
    (m, k), n = left.shape, right.shape[1]
    return rule if m > 1 and n > 1 and m * k * n <= FUSED_MM_MAX_WORK else None


def _value(arg) -> torch.Tensor | None:
    """The traced (fake) CPU float matrix behind ``arg``, or None."""
    value = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
    if (not isinstance(value, torch.Tensor) or value.device.type != "cpu"
            or value.dtype not in _FLOATS or value.dim() != 2):
        return None
    return value
