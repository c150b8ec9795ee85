"""Command line: ``pyro-svi-ext demo`` and ``pyro-svi-ext list``."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyro-svi-ext")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="Bayesian regression on the bundled diabetes data")
    demo.add_argument("--steps", type=int, default=3000)
    sub.add_parser("list", help="registered estimators with their capabilities")
    opts = parser.parse_args(argv)
    if opts.command == "demo":
        from pyro_svi_ext.demo import main as demo_main

        demo_main(opts.steps)
    else:
        from pyro_svi_ext import registry

        for r in registry.available():
            caps = ", ".join(f"{k}={v}" for k, v in vars(r.capabilities).items())
            print(f"{r.name}  aliases={list(r.aliases)}  plugin={r.plugin}\n  {r.signature}\n"
                  f"  {caps}")
    return 0
