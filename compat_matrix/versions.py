"""Which versions a cell may have, decided before anything is installed.

A side of a comparison is written ``PYRO[:IMPL][@TORCH]``: ``1.9.2`` (both
implementations, the running torch), ``1.9.2:pyro`` (Pyro's own classes only),
``1.9.2:ours@2.14.1`` (the plugin's classes on torch 2.14.1).
"""

from __future__ import annotations

import importlib.metadata
import operator
import re
from dataclasses import dataclass

from compat_matrix.schema import IMPLEMENTATIONS

#: what pyproject.toml requires; read from the installed metadata when there is one
SUPPORTED_PYRO = ">=1.8.6,<2"
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
        "==": operator.eq, "!=": operator.ne}
_RELEASE = re.compile(r"^\d+(\.\d+)*$")


class RefusedError(ValueError):
    """A version or side that no cell will be built for; the message is one line."""


def release(version: str) -> tuple[int, ...]:
    """``"1.9.2"`` -> ``(1, 9, 2)``; :class:`RefusedError` for anything but a release."""
    if not _RELEASE.match(version):
        raise RefusedError(f"{version!r} is not a release version (like 1.9.2)")
    parts = tuple(int(p) for p in version.split("."))
    return parts + (0,) * (3 - len(parts))


def supported_pyro() -> str:
    """The package's pyro-ppl requirement, e.g. ``">=1.8.6,<2"``."""
    try:
        requires = importlib.metadata.requires("pyro-svi-ext") or []
    except importlib.metadata.PackageNotFoundError:
        return SUPPORTED_PYRO
    for line in requires:
        match = re.match(r"^pyro-ppl\s*([^;]*)", line)
        if match and match.group(1).strip():
            clauses = match.group(1).replace(" ", "").split(",")
            return ",".join(sorted(clauses, key=lambda c: (not c.startswith(">"), c)))
    return SUPPORTED_PYRO


def check_pyro(version: str) -> None:
    """:class:`RefusedError` (one line) unless ``version`` is in the supported range."""
    spec = supported_pyro()
    have = release(version)
    for clause in spec.split(","):
        op = re.match(r"^(>=|<=|==|!=|>|<)", clause)
        if op is None:
            continue
        if not _OPS[op.group(1)](have, release(clause[op.end():])):
            raise RefusedError(f"pyro-ppl {version} is outside what pyro-svi-ext supports "
                               f"(pyro-ppl{spec}); no cell was built")


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a pyro version, an implementation (``None``: both),
    and a torch version."""

    pyro: str
    impl: str | None
    torch: str

    @property
    def label(self) -> str:
        return self.pyro + (f":{self.impl}" if self.impl else "") + f"@{self.torch}"


def parse_side(text: str, default_torch: str, torches: list[str]) -> Side:
    """``PYRO[:IMPL][@TORCH]`` -> :class:`Side`, refusing (one line, before any build) a
    pyro outside the supported range, an unknown implementation, or a torch that is
    neither the running one nor declared in matrix.toml (``torches``)."""
    rest, _, torch_version = text.partition("@")
    pyro_version, _, impl = rest.partition(":")
    check_pyro(pyro_version)
    if impl and impl not in IMPLEMENTATIONS:
        raise RefusedError(f"{text!r}: implementation {impl!r} is not one of "
                           f"{', '.join(IMPLEMENTATIONS)}")
    torch_version = torch_version or default_torch
    release(torch_version)
    if torch_version != default_torch and torch_version not in torches:
        raise RefusedError(f"{text!r}: torch {torch_version} is neither the running torch "
                           f"({default_torch}) nor declared in matrix.toml "
                           f"({', '.join(torches) or 'none'})")
    return Side(pyro_version, impl or None, torch_version)
