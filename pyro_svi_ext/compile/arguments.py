"""The arguments of a step call as graph inputs and guard-key entries.

``svi.step(*args, **kwargs)`` arguments are flattened (tuples, lists, dicts, named
tuples: torch's pytree) into leaves:

- a tensor leaf, positional or keyword, is a graph input (keyed by its signature);
  under Pyro's ``JitTrace_ELBO`` a tensor keyword argument was a constant, and keying it
  by ``repr`` let two batches whose printed summary agrees share one graph (a 2,000-
  element batch differing only in the middle gave the first batch's loss);
- a Python ``float`` leaf is a graph input too (a 0-dim float64 tensor), so a KL
  annealing factor that changes every step (``svi.step(x, annealing_factor=...)``, as
  Pyro's DMM and VAE examples write it) compiles once. While the step is traced the
  model sees a :class:`TracedFloat`: arithmetic with tensors reads the graph input; a
  comparison (``scale > 0`` in ``poutine.scale``) is recorded as a guard the next call
  must pass; a conversion to a plain number (``float(a)``, ``int(a)``, ``round``,
  hashing) makes that argument part of the key by value, as every other leaf is;
- any other leaf is keyed by value (``int``, ``bool``, ``str``, ``None``, ...) or, for
  other objects, by identity (a numpy array's ``repr`` is a summary too).

A float used through a function that reads the number directly (``math.log(a)``) is
invisible here; the sentinel (:mod:`.sentinel`) checks the first calls with a new value
against the eager step, and catches it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
from torch.utils import _pytree

#: functions that make a new tensor of a number
_FACTORIES = {torch.tensor, torch.as_tensor, torch.scalar_tensor}


_TENSOR_TYPES = {torch.Tensor, torch.nn.Parameter}
_CONTAINERS = (tuple, list, dict)


def flatten(args: tuple, kwargs: dict) -> tuple[list, object]:
    """``(leaves, spec)``: the leaves of ``(args, kwargs)`` and what rebuilds them.
    Without keyword arguments and containers the leaves are ``args`` and ``spec`` is
    True when they are all tensors (the common call: the key reads them at C speed),
    else None."""
    if not kwargs:
        if _TENSOR_TYPES.issuperset(map(type, args)):
            return args, True
        if not any(isinstance(a, _CONTAINERS) for a in args):
            return args, None
    leaves, spec = _pytree.tree_flatten((args, kwargs))
    return leaves, spec


def leaf_names(args: tuple, kwargs: dict) -> list[str]:
    """A readable name per leaf of :func:`flatten` (``argument 0``,
    ``annealing_factor``, ``batch['x']``)."""
    paths, _ = _pytree.tree_flatten_with_path((args, kwargs))
    names = []
    for path, _leaf in paths:
        first, rest = path[0].idx, path[1:]
        head = f"argument {rest[0].idx}" if first == 0 else str(rest[0].key)
        names.append(head + "".join(str(k) for k in rest[1:]))
    return names


def unflatten(leaves: list, spec) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of :func:`flatten`'s ``leaves`` and ``spec``."""
    if spec is None or spec is True:
        return tuple(leaves), {}
    args, kwargs = _pytree.tree_unflatten(leaves, spec)
    return tuple(args), dict(kwargs)


class Guards:
    """What a trace learnt about its float arguments: comparisons to pass again, and
    the argument positions it read as plain numbers (``baked``)."""

    def __init__(self) -> None:
        self.checks: list[tuple[Callable[[list], bool], bool]] = []
        self.baked: set[int] = set()

    def hold(self, scalars: list) -> bool:
        """Whether every recorded comparison gives the same answer for ``scalars``."""
        try:
            return all(check(scalars) == result for check, result in self.checks)
        except (ArithmeticError, ValueError):  # e.g. a division by a zero argument
            return False


def _value(x, scalars: list):
    """``x``'s value for another call's float arguments (``x`` itself if a number)."""
    return x.value_of(scalars) if isinstance(x, TracedFloat) else x


def _plain(x):
    return float.__float__(x) if isinstance(x, TracedFloat) else x


def _graph(x):
    return x.tensor if isinstance(x, TracedFloat) else x


class TracedFloat(float):
    """A float argument while a step is traced: its value for Python, a 0-dim graph
    tensor for torch. ``value_of(scalars)`` recomputes it from another call's float
    arguments (what a guard evaluates); ``guards`` collects comparisons and plain-number
    reads; ``positions``: the float arguments it derives from."""

    def __new__(cls, value: float, tensor: torch.Tensor, value_of: Callable, guards: Guards,
                positions: frozenset):
        self = super().__new__(cls, value)
        self.tensor, self.value_of, self.guards, self.positions = (
            tensor, value_of, guards, positions)
        return self

    @classmethod
    def argument(cls, value: float, tensor: torch.Tensor, position: int,
                 guards: Guards) -> TracedFloat:
        """The float argument at ``position`` among the call's floats."""
        return cls(value, tensor, operator.itemgetter(position), guards,
                   frozenset((position,)))

    # --- torch: the graph tensor, in the dtype a Python number would take ---------------
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in _pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        floating = [t for t in tensors if t.is_floating_point()]
        dtype = floating[0].dtype if floating else torch.get_default_dtype()
        device = tensors[0].device if tensors else None
        if func in _FACTORIES:  # torch.tensor(a): a new tensor of the number, as eager
            return args[0].tensor.to(dtype=kwargs.get("dtype") or torch.get_default_dtype(),
                                     device=kwargs.get("device"), copy=True)
        args, kwargs = _pytree.tree_map(
            lambda x: x.tensor.to(dtype=dtype, device=device) if isinstance(x, TracedFloat)
            else x, (args, kwargs))
        return func(*args, **kwargs)

    # --- Python arithmetic keeps the trace ----------------------------------------------
    def _derived(self, other, op, reflected: bool = False):
        """``op(self, other)`` (or reflected) with a number: a float that keeps the
        trace. With a tensor: NotImplemented, so the tensor's op runs (and reaches
        :meth:`__torch_function__`)."""
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            return NotImplemented
        a, b = (other, self) if reflected else (self, other)
        positions = self.positions | getattr(other, "positions", frozenset())
        return TracedFloat(op(_plain(a), _plain(b)), op(_graph(a), _graph(b)),
                           lambda s: op(_value(a, s), _value(b, s)), self.guards, positions)

    def __add__(self, other):
        return self._derived(other, operator.add)

    def __radd__(self, other):
        return self._derived(other, operator.add, True)

    def __sub__(self, other):
        return self._derived(other, operator.sub)

    def __rsub__(self, other):
        return self._derived(other, operator.sub, True)

    def __mul__(self, other):
        return self._derived(other, operator.mul)

    def __rmul__(self, other):
        return self._derived(other, operator.mul, True)

    def __truediv__(self, other):
        return self._derived(other, operator.truediv)

    def __rtruediv__(self, other):
        return self._derived(other, operator.truediv, True)

    def __pow__(self, other):
        return self._derived(other, operator.pow)

    def __rpow__(self, other):
        return self._derived(other, operator.pow, True)

    def __neg__(self):
        return self._derived(-1.0, operator.mul)

    def __pos__(self):
        return self

    # --- comparisons: guards ------------------------------------------------------------
    def _compared(self, other, op):
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            return NotImplemented
        result = op(float.__float__(self), _plain(other))
        self.guards.checks.append(
            (lambda s, a=self, b=other: op(_value(a, s), _value(b, s)), result))
        return result

    def __lt__(self, other):
        return self._compared(other, operator.lt)

    def __le__(self, other):
        return self._compared(other, operator.le)

    def __gt__(self, other):
        return self._compared(other, operator.gt)

    def __ge__(self, other):
        return self._compared(other, operator.ge)

    def __eq__(self, other):
        return self._compared(other, operator.eq)

    def __ne__(self, other):
        return self._compared(other, operator.ne)

    def __bool__(self):
        return self._compared(0.0, operator.ne)

    # --- a plain number: the arguments it derives from are keyed by value ---------------
    def _baked(self):
        self.guards.baked.update(self.positions)
        return float.__float__(self)

    def __float__(self):
        return self._baked()

    def __int__(self):
        return int(self._baked())

    def __index__(self):
        raise TypeError("a float argument cannot be an index")

    def __round__(self, ndigits=None):
        return round(self._baked(), ndigits)

    def __floor__(self):
        return math.floor(self._baked())

    def __ceil__(self):
        return math.ceil(self._baked())

    def __trunc__(self):
        return math.trunc(self._baked())

    def __hash__(self):
        return hash(self._baked())

    def __reduce__(self):
        return float, (self._baked(),)
