"""A checkpoint on disk: written whole or not at all, read without running anything.

- :func:`write_atomically`: ``torch.save`` to a temporary file in the same directory,
  flushed and fsynced, then ``os.replace`` d over the path (and the directory fsynced):
  a kill at any moment leaves the previous checkpoint or the new one, never a torn file.
  Partial files of writers that died are removed by the next write.
- :func:`read`: ``torch.load(weights_only=True)``: tensors and plain Python data only,
  so a planted pickle is refused before any of its code runs. Every failure (missing,
  truncated, corrupt, foreign, from a newer format, a refused pickle) is one
  :class:`~pyro_svi_ext.errors.CheckpointError` naming the path.
- constraints as small specs (``{"name": "interval", "args": [0.0, 1.0]}``) and the
  random states (Python, NumPy if imported, torch CPU, every initialized CUDA device) as
  plain data and byte tensors.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sys
import tempfile
import warnings
from pathlib import Path

import pyro.distributions.constraints as constraints
import torch

from pyro_svi_ext.errors import CheckpointError

FORMAT = "pyro_svi_ext.checkpoint"
#: the format version this package writes and the newest it reads
VERSION = 1
_PARTIAL = ".partial"

# --- writing and reading -------------------------------------------------------------------


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True


def _remove_dead_partials(path: Path) -> None:
    """Temporary files ``.<name>.<pid>.*.partial`` of writers that no longer run (killed
    mid-write): nobody will finish them."""
    for partial in path.parent.glob(f".{path.name}.*{_PARTIAL}"):
        pid = partial.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _writer_alive(int(pid)):
            with contextlib.suppress(OSError):
                partial.unlink()


def write_atomically(path: str | os.PathLike, data: dict) -> None:
    """``torch.save(data)`` to ``path`` all at once (see the module); the previous file
    stays until the new one is complete on disk."""
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write checkpoint {path}: no directory {path.parent}")
    _remove_dead_partials(path)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=_PARTIAL,
                                   dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    with contextlib.suppress(OSError):  # the rename itself, durable (POSIX)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def read(path: str | os.PathLike, map_location=None) -> dict:
    """The checkpoint at ``path``, checked to be one of this package's (format and
    version, the fields and their kinds); :class:`CheckpointError` naming the path
    otherwise. Tensors are loaded on the CPU unless ``map_location`` says else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # (torch's notes on a foreign pickle's protocol)
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu" if map_location is None
                              else map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(_unreadable(path, err)) from None
    _check_layout(path, data)
    return data


def _unreadable(path: Path, err: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` refused ``path``."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (f"refused to load {path}: it holds objects other than tensors and plain data "
                f"(a pickle that could run code, calling {found.group(1)}); nothing of it "
                "was run")
    if "Weights only load failed" in text:
        return (f"refused to load {path}: it is not tensors and plain data in a form this "
                "package reads (a foreign pickle, or not a checkpoint); nothing of it was run")
    first = text.strip().splitlines()[0] if text.strip() else "no data"
    return (f"cannot read checkpoint {path}: truncated, corrupt or not a checkpoint "
            f"({type(err).__name__}: {first})")


#: field -> type of a checkpoint's top level
FIELDS = {"format": str, "version": int, "params": dict, "networks": dict, "roots": dict,
          "optim": dict, "steps": int, "rng": list, "world": int, "losses": list,
          "stop_reason": (str, type(None)), "nonfinite": dict,
          "convergence": (dict, type(None))}


def _check_layout(path: Path, data: object) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyro_svi_ext checkpoint (written by "
                              "svi.save or fit(checkpoint=...))")
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {data.get('version')!r}"
                              f"; this pyro_svi_ext reads up to {VERSION} (upgrade it)")
    for name, kind in FIELDS.items():
        if not isinstance(data.get(name), kind):
            raise CheckpointError(f"{path} is a damaged checkpoint: field {name!r} is "
                                  f"{type(data.get(name)).__name__}")
    for name, entry in data["params"].items():
        if not (isinstance(entry, dict) and torch.is_tensor(entry.get("value"))):
            raise CheckpointError(f"{path} is a damaged checkpoint: param {name!r}")


# --- constraints as specs ------------------------------------------------------------------
#: constraints made from arguments: factory name -> the attributes that are its arguments
FACTORIES = {"interval": ("lower_bound", "upper_bound"),
             "half_open_interval": ("lower_bound", "upper_bound"),
             "integer_interval": ("lower_bound", "upper_bound"),
             "greater_than": ("lower_bound",), "greater_than_eq": ("lower_bound",),
             "less_than": ("upper_bound",), "multinomial": ("upper_bound",),
             "independent": ("base_constraint", "reinterpreted_batch_ndims")}


def _singletons() -> dict[str, constraints.Constraint]:
    return {name: value for name, value in sorted(vars(constraints).items())
            if isinstance(value, constraints.Constraint) and not name.startswith("_")}


def constraint_spec(constraint: constraints.Constraint, param: str) -> dict:
    """``{"name": ..., "args": [...]}`` of one of Pyro's or torch's constraints
    (arguments as numbers or tensors, a nested spec for ``independent``);
    :class:`CheckpointError` naming ``param`` for one it cannot describe."""
    for name, value in _singletons().items():
        if constraint is value:
            return {"name": name, "args": []}
    for name, attributes in FACTORIES.items():
        factory = getattr(constraints, name, None)
        if isinstance(factory, type) and type(constraint) is factory:
            args = [getattr(constraint, a) for a in attributes]
            return {"name": name, "args": [constraint_spec(a, param) if isinstance(
                a, constraints.Constraint) else a for a in args]}
    singleton_types = {type(v): n for n, v in _singletons().items()}
    name = singleton_types.get(type(constraint))
    if name is not None and not vars(constraint):  # an unpickled copy of a singleton
        return {"name": name, "args": []}
    raise CheckpointError(f"param {param!r}: its constraint {constraint!r} cannot be stored "
                          "in a checkpoint (one of pyro.distributions.constraints' can)")


def constraint_from_spec(spec: dict) -> constraints.Constraint:
    """The constraint :func:`constraint_spec` described."""
    name, args = spec["name"], spec["args"]
    value = getattr(constraints, name, None)
    if name in FACTORIES:
        return value(*[constraint_from_spec(a) if isinstance(a, dict) else a for a in args])
    if not isinstance(value, constraints.Constraint):
        raise CheckpointError(f"unknown constraint {name!r} in the checkpoint")
    return value


def same_spec(a: object, b: object) -> bool:
    """Whether two specs (or their arguments) are equal, tensors compared by value."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_spec(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_spec(x, y) for x, y in zip(a, b, strict=True))
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    return a == b


def describe_spec(spec: dict) -> str:
    args = ", ".join(describe_spec(a) if isinstance(a, dict) else str(
        a.tolist() if torch.is_tensor(a) else a) for a in spec["args"])
    return f"{spec['name']}({args})" if spec["args"] else spec["name"]


# --- random states -------------------------------------------------------------------------
def random_state() -> dict:
    """This process's random states: Python's, NumPy's global one (if NumPy is
    imported), torch's CPU generator and each initialized CUDA device's."""
    numpy = sys.modules.get("numpy")
    state = {"python": random.getstate(), "numpy": None, "torch": torch.get_rng_state(),
             "cuda": []}
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos),
                          int(has_gauss), float(cached)]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    return state


def check_random_state(state: object, where: str) -> None:
    """:class:`CheckpointError` unless ``state`` is one :func:`random_state` wrote and
    this process can take (as many CUDA devices)."""
    if not (isinstance(state, dict) and torch.is_tensor(state.get("torch"))
            and isinstance(state.get("python"), tuple) and isinstance(state.get("cuda"), list)):
        raise CheckpointError(f"{where}: a damaged random state")
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if state["cuda"] and len(state["cuda"]) != devices:
        from pyro_svi_ext.errors import CheckpointMismatchError

        raise CheckpointMismatchError(
            f"{where}: the random states of {len(state['cuda'])} CUDA devices were saved, "
            f"this process has {devices}; resume where the run was (or load with "
            "map_location=..., which skips the CUDA random states)")


def set_random_state(state: dict, cuda: bool = True) -> None:
    """Restore what :func:`random_state` saved (CUDA devices' unless ``cuda=False``)."""
    random.setstate(state["python"])
    if state["numpy"] is not None:
        import numpy

        kind, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype(numpy.uint32), pos, has_gauss,
                                cached))
    torch.set_rng_state(state["torch"].cpu())
    if cuda:
        for device, rng in enumerate(state["cuda"]):
            torch.cuda.set_rng_state(rng.cpu(), device)
