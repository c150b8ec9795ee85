"""Tensors of two devices in one run (data on the CPU, params on CUDA, or the reverse):
torch's error said again with the run, the site and where the step's tensors are.

Nothing here runs unless torch has raised: a step pays nothing for the check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from pyro_svi_ext.errors import DeviceMismatchError

#: torch's wording of a device mix, across versions and ops ("Expected all tensors to be
#: on the same device ...", "Tensor on device meta is not on the expected device cpu!",
#: "... mat2 is on cpu, different from other tensors on cuda:0 ...", "indices should be
#: either on cpu or on the same device as the indexed tensor", "Input type
#: (torch.FloatTensor) and weight type (torch.cuda.FloatTensor) should be the same",
#: "Expected a 'cuda' device type for generator but found 'cpu'")
_MIXED = re.compile(r"same device|expected device|different from other tensors|"
                    r"device type|torch\.cuda\.\w*Tensor")

#: names listed per device before "..."
_SHOWN = 6


def is_device_mismatch(err: BaseException) -> bool:
    """Whether ``err`` is torch's complaint about tensors on two devices (and not yet
    one of ours)."""
    return (isinstance(err, RuntimeError) and not isinstance(err, DeviceMismatchError)
            and bool(_MIXED.search(str(err))))


def where_tensors_are(params: Mapping[str, torch.Tensor], args: tuple = (),
                      kwargs: Mapping | None = None) -> str:
    """``"cpu: argument #0, argument #1; cuda:0: param 'loc'"``: the step's params and
    tensor arguments grouped by device."""
    by_device: dict[str, list[str]] = {}
    named = [(f"param {n!r}", t) for n, t in params.items()]
    named += [(f"argument #{i}", a) for i, a in enumerate(args)]
    named += [(f"argument {k!r}", v) for k, v in (kwargs or {}).items()]
    for label, value in named:
        if torch.is_tensor(value):
            by_device.setdefault(str(value.device), []).append(label)
    return "; ".join(f"{device}: {', '.join(labels[:_SHOWN])}"
                     + (f" and {len(labels) - _SHOWN} more" if len(labels) > _SHOWN else "")
                     for device, labels in by_device.items()) or "no tensors"


def mixed_devices_in_run(err: RuntimeError, role: str, last_site: str | None,
                         params: Mapping[str, torch.Tensor], args: tuple,
                         kwargs: Mapping) -> DeviceMismatchError:
    """The error for torch's device mix ``err`` raised by the ``role`` ("model" or
    "guide") code after its sample site ``last_site`` (None: before its first)."""
    where = (f"after its sample site {last_site!r}" if last_site is not None
             else "before its first sample site")
    first = str(err).splitlines()[0].rstrip("!. ") if str(err) else type(err).__name__
    return DeviceMismatchError(
        f"tensors on different devices in the {role}, {where}: {first}. This step's "
        f"tensors are on {where_tensors_are(params, args, kwargs)}. Put the data and the "
        "params on one device (e.g. `data.to(device)` before the step, and "
        "`device=` for tensors the model creates)")


def mixed_devices_at_site(err: RuntimeError, what: str, site_name: str, role: str,
                          value, fn) -> DeviceMismatchError:
    """The error for torch's device mix ``err`` while computing ``what`` (log_prob,
    score_parts) at a site: Pyro's phrase first, then the value's and the
    distribution's devices."""
    value_device = value.device if torch.is_tensor(value) else "a non-tensor"
    dist_devices = sorted({str(v.device) for v in vars(fn).values() if torch.is_tensor(v)})
    return DeviceMismatchError(
        f"Error while computing {what} at site {site_name!r} ({role}): its value is on "
        f"{value_device}, its distribution's tensors on {', '.join(dist_devices) or '?'}: "
        f"{err}")
