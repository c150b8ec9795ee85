"""Runs inside a cell: ``python -m compat_matrix.worker MODULE OUT.json [--steps K]``."""

from __future__ import annotations

import argparse
import json

from compat_matrix.conformance import conformance
from compat_matrix.quantities import compute_module, environment, load_module
from pyro_svi_ext.pyro_compat import probe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("module")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=20)
    opts = parser.parse_args(argv)
    results = compute_module(load_module(opts.module), opts.steps)
    with open(opts.out, "w") as f:
        json.dump({"environment": environment(), "scenarios": results,
                   "conformance": conformance(), "pyro_internals": probe()}, f)


if __name__ == "__main__":
    main()
