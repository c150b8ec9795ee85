"""TracePosterior: a bag of execution traces with log weights (minimal base; the
posterior issue extends it)."""

from __future__ import annotations

from collections.abc import Iterator

import pyro.poutine as poutine
import torch


class TracePosterior:
    """Collects ``(trace, log_weight)`` pairs from :meth:`_traces` when :meth:`run` is called.

    Subclasses implement ``_traces(*args, **kwargs)``, yielding ``pyro.poutine.Trace``
    objects with their log weights (float or scalar tensor).

    :param int num_chains: number of chains the traces are drawn from (ids kept per trace).
    """

    def __init__(self, num_chains: int = 1):
        self.num_chains = num_chains
        self._reset()

    def _reset(self) -> None:
        self.exec_traces: list = []
        self.log_weights: list = []
        self.chain_ids: list[int] = []

    def _traces(self, *args, **kwargs) -> Iterator:
        raise NotImplementedError(f"{type(self).__name__} must implement _traces")

    def run(self, *args, **kwargs) -> TracePosterior:
        """Collect the traces (with pyro's effect stack blocked from outer handlers);
        returns ``self``."""
        self._reset()
        with poutine.block():
            for trace, log_weight in self._traces(*args, **kwargs):
                self.exec_traces.append(trace)
                self.log_weights.append(log_weight)
                self.chain_ids.append(0)
        return self

    def __len__(self) -> int:
        return len(self.exec_traces)

    def __iter__(self) -> Iterator:
        return iter(self.exec_traces)

    def __getitem__(self, index: int):
        return self.exec_traces[index]

    def log_weights_tensor(self) -> torch.Tensor:
        """The log weights as a 1-D tensor of shape ``(num_traces,)``."""
        return torch.stack([torch.as_tensor(w, dtype=torch.get_default_dtype())
                            for w in self.log_weights])
