"""What the GPU check runs on (phase ``versions`` of ``check.sh``): versions and paths of
the packages, the device, a C compiler and the Python headers (triton compiles its
launcher with them), and one ``torch.compile`` on ``$DEVICE`` (default ``cuda``).
Exits 1 when the device, pyro or the smoke compile is missing."""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import sys
import sysconfig
import time
from pathlib import Path


def version(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as err:
        return f"MISSING ({type(err).__name__}: {err})"
    where = Path(getattr(module, "__file__", "") or "?").parent
    return f"{getattr(module, '__version__', '?')} ({where})"


def build_tools() -> list[str]:
    """Problems of the C toolchain triton needs (empty: none)."""
    problems = []
    compilers = [c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c]
    found = next((shutil.which(c) for c in compilers if shutil.which(c)), None)
    print(f"C compiler: {found or 'MISSING'}")
    if not found:
        problems.append("no C compiler (cc, gcc, clang): triton cannot build its launcher")
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    print(f"Python headers: {header if header.exists() else f'MISSING ({header})'}")
    if not header.exists():
        problems.append(f"no Python headers ({header}): triton cannot build its launcher")
    return problems


def smoke_compile(torch, device: str) -> float:
    """Seconds of one ``torch.compile`` of a small function, run and checked."""
    def f(x):
        return torch.sin(x) * 2.0 + 1.0

    x = torch.randn(4096, device=device)
    start = time.perf_counter()
    y = torch.compile(f)(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    torch.testing.assert_close(y, f(x))
    return seconds


def main() -> int:
    device = os.environ.get("DEVICE", "cuda")
    failures = []
    print(f"python {platform.python_version()} ({sys.executable}), {platform.platform()}")
    for name in ("torch", "triton", "pyro", "pyro_svi_ext", "numpyro", "funsor", "jax",
                 "numpy", "pluggy", "tqdm", "opt_einsum", "pytest"):
        print(f"{name}: {version(name)}")
    if "MISSING" in version("pyro"):
        failures.append("pyro-ppl is not importable (the carried wheels?)")
    import torch

    print(f"torch CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}, "
          f"devices: {torch.cuda.device_count()}")
    if torch.cuda.is_available():
        print(f"device 0: {torch.cuda.get_device_name(0)}, capability "
              f"{torch.cuda.get_device_capability(0)}, cudnn {torch.backends.cudnn.version()}")
    print(f"NCCL: {torch.distributed.is_available() and torch.distributed.is_nccl_available()}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        failures.append("no CUDA device")
    try:
        import jax

        print(f"jax devices: {jax.devices()}")
    except Exception as err:
        print(f"jax devices: MISSING ({type(err).__name__}: {err})")
    problems = build_tools()
    try:
        print(f"smoke torch.compile on {device}: ok in {smoke_compile(torch, device):.1f} s")
    except Exception as err:
        print(f"SMOKE COMPILE FAILED on {device}: {type(err).__name__}: {err}"[:2000])
        failures.append("torch.compile failed" + (f" ({'; '.join(problems)})"
                                                  if problems else ""))
    for failure in failures:
        print(f"PROBLEM: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
