"""Cells of the matrix: declared in ``matrix.toml``, built under ``.cells/``, cached.

A cell whose torch is the running environment's reuses it and gets its pyro-ppl from a
per-version ``pip install --no-deps --target`` directory put first on ``PYTHONPATH``.
A cell with another torch gets its own virtual environment (manual axis only).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tomllib
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CELLS = HERE / ".cells"


@dataclass(frozen=True)
class Cell:
    pyro: str
    torch: str
    manual: bool = False

    @property
    def label(self) -> str:
        return f"pyro {self.pyro} / torch {self.torch}"

    @property
    def key(self) -> str:
        return f"pyro-{self.pyro}-torch-{self.torch}"


class CellUnavailableError(RuntimeError):
    """A cell that could not be built or is not requested (``reason`` says why)."""


def load_matrix(path: Path = HERE / "matrix.toml") -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def declared_cells(matrix: dict | None = None, pyro_versions=None) -> list[Cell]:
    matrix = matrix or load_matrix()
    pyros = pyro_versions or matrix["axes"]["pyro"]
    cells = [Cell(p, t) for t in matrix["axes"]["torch"] for p in pyros]
    cells += [Cell(p, t, manual=True) for t in matrix.get("manual", {}).get("torch", [])
              for p in pyros]
    return cells


def running_torch() -> str:
    return torch.__version__.split("+")[0]


def _pip(*args: str, python: str = sys.executable) -> None:
    subprocess.run([python, "-m", "pip", "install", "-q", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def build(cell: Cell, with_manual: bool = False) -> tuple[str, str]:
    """``(python executable, PYTHONPATH entry)`` for the cell, building it if its
    declaration changed. ``CellUnavailableError`` for manual cells unless ``with_manual``."""
    target = CELLS / cell.key
    declaration = json.dumps({"cell": cell.key, "python": sys.version.split()[0]})
    marker = target / ".declaration"
    python = sys.executable
    if cell.torch != running_torch():
        if not with_manual:
            raise CellUnavailableError("manual torch axis (a multi-GB build); run with "
                                  "--with-manual to build it")
        venv = target / "venv"
        python = str(venv / "bin" / "python")
    if marker.exists() and marker.read_text() == declaration:
        return python, str(target / "site")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    try:
        if python != sys.executable:
            subprocess.run([sys.executable, "-m", "venv", str(target / "venv")], check=True)
            _pip(f"torch=={cell.torch}", "numpy", "opt_einsum", "pyro-api", "tqdm", "pluggy",
                 python=python)
            _pip("--no-deps", "-e", str(REPO), python=python)
        _pip("--no-deps", "--target", str(target / "site"), f"pyro-ppl=={cell.pyro}")
    except subprocess.CalledProcessError as err:
        shutil.rmtree(target, ignore_errors=True)
        stderr = (err.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
        raise CellUnavailableError(f"build failed: {' '.join(stderr)}") from err
    marker.write_text(declaration)
    return python, str(target / "site")


def run(cell: Cell, module: str, steps: int, with_manual: bool = False) -> dict:
    """The worker's JSON output for ``module`` in ``cell``."""
    python, site = build(cell, with_manual)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([site, str(REPO)]))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        proc = subprocess.run([python, "-m", "compat_matrix.worker", module, str(out),
                               "--steps", str(steps)], env=env, cwd=REPO,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise CellUnavailableError("worker failed: " + proc.stderr.strip().splitlines()[-1])
        result = json.loads(out.read_text())
    if result["environment"]["pyro"] != cell.pyro:
        raise CellUnavailableError(f"cell ran pyro {result['environment']['pyro']}, "
                              f"not {cell.pyro}")
    return result
