"""Where each part of a compiled step sits in its flat inputs and outputs.

Inputs, in order: the params (unconstrained tensors), the optimizer's state tensors (the
first ``n_written`` are rewritten by the update; the rest are learning rates, read
only unless ClippedAdam decays them), the side state (param-store entries the estimator
rewrites outside the optimizer, e.g. decaying averages), the tensor arguments (the
tensor leaves of ``(args, kwargs)``: :mod:`.arguments`), the float arguments (0-dim
float64 tensors), the buffers of the modules the step runs (:mod:`.module_state`).

Traced outputs: the loss, one gradient per param, then the new values of everything
written: params and written optimizer state (for a whole SVI step), side state, buffers.
A production graph (:func:`writing_in_place`) also returns each random draw that nothing
reads, so no backend drops a draw the eager step makes.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from pyro_svi_ext.compile.graph_passes import is_random, lazy_module


@dataclass(frozen=True)
class StepLayout:
    n_params: int
    n_state: int
    n_written: int
    n_side: int
    #: positions among the arguments' leaves of the tensor arguments (the other leaves
    #: are constants of the graph, and part of its key)
    arg_slots: tuple[int, ...]
    #: whether the optimizer's update is part of the graph
    whole_step: bool
    #: buffers of the modules the step runs (inputs written in place)
    n_buffers: int = 0
    #: positions among the leaves of the float arguments given as inputs
    float_slots: tuple[int, ...] = ()

    @classmethod
    def of(cls, n_params: int, plan, n_side: int, leaves: list, n_buffers: int = 0,
           float_slots: tuple[int, ...] = ()) -> StepLayout:
        """The layout for ``n_params`` params, an optimizer plan (None: gradients only),
        ``n_side`` side-state tensors, the call's argument ``leaves``
        (:func:`.arguments.flatten`), ``n_buffers`` module buffers and the float
        arguments at ``float_slots``."""
        slots = tuple(i for i, a in enumerate(leaves) if torch.is_tensor(a))
        if plan is None:
            return cls(n_params, 0, 0, n_side, slots, False, n_buffers, float_slots)
        return cls(n_params, len(plan.inputs), len(plan.written), n_side, slots, True,
                   n_buffers, float_slots)

    # --- inputs ---------------------------------------------------------------------------
    def inputs(self, params: list, state: list, side: list, leaves: list,
               buffers: list = ()) -> list:
        tensors = [leaves[i] for i in self.arg_slots]
        if not self.float_slots and not buffers:
            return [*params, *state, *side, *tensors]
        floats = [torch.tensor(leaves[i], dtype=torch.float64) for i in self.float_slots]
        return [*params, *state, *side, *tensors, *floats, *buffers]

    def split_inputs(self, flat: tuple) -> tuple[list, list, list, list, list, list]:
        """``(params, optimizer state, side state, tensor arguments, float arguments,
        buffers)``."""
        a = self.n_params
        b = a + self.n_state
        c = b + self.n_side
        d = c + len(self.arg_slots)
        e = d + len(self.float_slots)
        return (list(flat[:a]), list(flat[a:b]), list(flat[b:c]), list(flat[c:d]),
                list(flat[d:e]), list(flat[e:]))

    def call_leaves(self, leaves: list, tensors: list, floats: list) -> list:
        """``leaves`` with the traced tensors and floats in their slots."""
        call = list(leaves)
        for slot, value in zip(self.arg_slots, tensors, strict=True):
            call[slot] = value
        for slot, value in zip(self.float_slots, floats, strict=True):
            call[slot] = value
        return call

    @property
    def written_inputs(self) -> list[int]:
        """Input positions the production graph writes in place, in the order of the
        traced outputs' new values."""
        side = range(self.n_params + self.n_state, self.n_params + self.n_state + self.n_side)
        first_buffer = (self.n_params + self.n_state + self.n_side + len(self.arg_slots)
                        + len(self.float_slots))
        buffers = range(first_buffer, first_buffer + self.n_buffers)
        if not self.whole_step:
            return [*side, *buffers]
        return [*range(self.n_params + self.n_written), *side, *buffers]

    # --- outputs --------------------------------------------------------------------------
    @property
    def kept(self) -> int:
        """Outputs the production graph returns: ``(loss,)`` for a whole step (its
        gradients are fused into the update), ``(loss, *grads)`` otherwise."""
        return 1 if self.whole_step else 1 + self.n_params

    def split_outputs(self, outputs) -> tuple[torch.Tensor, list, list]:
        """``(loss, grads, new values)`` of the traced graph's outputs."""
        return outputs[0], list(outputs[1:1 + self.n_params]), list(outputs[1 + self.n_params:])


def writing_in_place(gm: torch.fx.GraphModule, layout: StepLayout) -> torch.fx.GraphModule:
    """The production graph of a traced one: each new value copied into its input
    (``aten.copy_``; none where the new value is the input itself, e.g. a buffer only
    read), the first ``layout.kept`` outputs returned, then every random draw no node
    reads (TorchScript's dead-code pass drops those, and the global generator would
    then stand elsewhere after the step than after the eager one)."""
    graph = torch.fx.Graph()
    outputs = graph.graph_copy(gm.graph, {})
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    new_values = outputs[1 + layout.n_params:]
    for at, value in zip(layout.written_inputs, new_values, strict=True):
        if value is not placeholders[at]:
            graph.call_function(torch.ops.aten.copy_.default, (placeholders[at], value))
    unread_draws = [n if isinstance(n.meta.get("val"), torch.Tensor) else
                    graph.call_function(operator.getitem, (n, 0))  # (values, mask), say
                    for n in list(graph.nodes) if is_random(n) and not n.users]
    graph.output(tuple(outputs[:layout.kept]) + tuple(unread_draws))
    graph.eliminate_dead_code()
    return lazy_module(gm, graph)
