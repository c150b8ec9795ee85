"""Cells of the matrix: a (pyro-ppl, torch) pair, built in a per-user cache, then run.

Layout of the cache (:func:`cache_root`, outside any clone):

- ``pyro/<version>/site``: pyro-ppl installed with ``pip --no-deps --target``, put first
  on ``PYTHONPATH`` (shared by every torch);
- ``torch/<version>/venv``: a virtual environment with that torch and pyro-ppl's other
  dependencies, for a torch that is not the running one (shared by every pyro).

A cell on the running torch uses the running interpreter. This package and
``compat_matrix`` reach the cell through a directory of links, never by installing
them there, so a wheel install and a clone work alike.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tomllib
import torch

import _pyro_svi_ext_pytestplugin
import pyro_svi_ext
from pyro_svi_ext.demo import user_cache_dir

HERE = Path(__file__).resolve().parent
PACKAGES = {"compat_matrix": HERE, "pyro_svi_ext": Path(pyro_svi_ext.__file__).parent,
            # the pytest plugin's entry module (top level, outside the package)
            "_pyro_svi_ext_pytestplugin.py": Path(_pyro_svi_ext_pytestplugin.__file__)}
#: pyro-ppl's dependencies besides torch, and pytest for the test-suite mode
TORCH_ENV_PACKAGES = ("numpy", "opt_einsum", "pyro-api", "tqdm", "pluggy", "pytest")


@dataclass(frozen=True)
class Cell:
    pyro: str
    torch: str

    @property
    def label(self) -> str:
        return f"pyro {self.pyro} / torch {self.torch}"


class CellError(RuntimeError):
    """A cell that could not be built or run. ``str()`` is one line naming the cause;
    ``stderr`` keeps everything the failing command printed."""

    def __init__(self, summary: str, stderr: str = "") -> None:
        super().__init__(summary)
        self.stderr = stderr


def cache_root() -> Path:
    """``$PYRO_SVI_EXT_CACHE``, else ``$XDG_CACHE_HOME/pyro-svi-ext``, else
    ``~/.cache/pyro-svi-ext`` (the package's per-user cache)."""
    return user_cache_dir()


def load_matrix(path: Path = HERE / "matrix.toml") -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def declared_torches(matrix: dict) -> list[str]:
    """Every torch in matrix.toml: the CI axis first, then the slow tier."""
    return [*matrix["axes"]["torch"], *matrix.get("slow", {}).get("torch", [])]


def declared_cells(matrix: dict, pyro_versions=None, torch_versions=None) -> list[Cell]:
    pyros = pyro_versions or matrix["axes"]["pyro"]
    torches = torch_versions or matrix["axes"]["torch"]
    return [Cell(p, t) for t in torches for p in pyros]


def running_torch() -> str:
    return torch.__version__.split("+")[0]


def summarize_stderr(stderr: str) -> str:
    """The line of a failing command's output that says why: pip's last ``ERROR:``
    line, or a traceback's exception line (with the failing source line when the
    exception has no message, as for a bare ``assert``)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return "no output"
    errors = [line for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[-1]
    last = lines[-1].strip()
    if last in {"AssertionError", "AssertionError: "} and len(lines) >= 2:
        return f"{last} at `{lines[-2].strip()}`"
    return last


def _run_checked(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CellError(f"{what} failed: {summarize_stderr(proc.stderr)}",
                        proc.stdout + proc.stderr)


def _built(target: Path, declaration: dict) -> bool:
    marker = target / ".declaration"
    return marker.exists() and json.loads(marker.read_text()) == declaration


def _mark(target: Path, declaration: dict) -> None:
    (target / ".declaration").write_text(json.dumps(declaration))


def pyro_site(version: str, log=print) -> Path:
    """The directory holding pyro-ppl ``version`` (built on first use)."""
    target = cache_root() / "pyro" / version
    declaration = {"pyro": version, "python": sys.version.split()[0]}
    if not _built(target, declaration):
        log(f"building pyro-ppl {version} in {target}")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        try:
            _run_checked([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--target", str(target / "site"), f"pyro-ppl=={version}"],
                         f"pip install pyro-ppl=={version}")
        except CellError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        _mark(target, declaration)
    return target / "site"


def torch_python(version: str, log=print) -> str:
    """An interpreter with torch ``version``: the running one, or a cached venv."""
    if version == running_torch():
        return sys.executable
    target = cache_root() / "torch" / version
    python = target / "venv" / "bin" / "python"
    declaration = {"torch": version, "python": sys.version.split()[0],
                   "packages": list(TORCH_ENV_PACKAGES)}
    if not _built(target, declaration):
        log(f"building a torch {version} environment in {target} (a CUDA build of torch "
            "is several GB)")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        try:
            _run_checked([sys.executable, "-m", "venv", str(target / "venv")], "venv")
            _run_checked([str(python), "-m", "pip", "install", "-q", f"torch=={version}",
                          *TORCH_ENV_PACKAGES], f"pip install torch=={version}")
        except CellError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        _mark(target, declaration)
    return str(python)


@contextmanager
def cell_environment(cell: Cell, log=print):
    """``(python, env)`` to run a command in ``cell``: the cell's interpreter, and an
    environment whose ``PYTHONPATH`` puts the cell's pyro first, then links to this
    package and ``compat_matrix``."""
    python = torch_python(cell.torch, log)
    site = pyro_site(cell.pyro, log)
    with tempfile.TemporaryDirectory(prefix="pyro-svi-ext-code-") as code:
        for name, path in PACKAGES.items():
            os.symlink(path, Path(code) / name)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), code]))
        yield python, env


def run(cell: Cell, module: str, steps: int, log=print) -> dict:
    """The worker's JSON output for scenario ``module`` in ``cell``; :class:`CellError`
    (whole stderr kept) when the cell cannot be built or the worker fails."""
    with cell_environment(cell, log) as (python, env), \
            tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        proc = subprocess.run([python, "-m", "compat_matrix.worker", module, str(out),
                               "--steps", str(steps)], env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0 or not out.exists():
            raise CellError(f"the worker failed in {cell.label}: "
                            f"{summarize_stderr(proc.stderr)}", proc.stderr)
        result = json.loads(out.read_text())
    ran = (result["environment"]["pyro"], result["environment"]["torch"])
    if ran != (cell.pyro, cell.torch):
        raise CellError(f"{cell.label} ran pyro {ran[0]} / torch {ran[1]}")
    return result
