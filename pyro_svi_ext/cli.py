"""Command line: ``pyro-svi-ext demo``, ``pyro-svi-ext list`` and
``pyro-svi-ext run SCRIPT [ARGS...]`` (an unchanged Pyro script on the plugin)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pyro-svi-ext")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="Bayesian regression on the bundled diabetes data")
    demo.add_argument("--steps", type=int, default=3000)
    sub.add_parser("list", help="registered estimators with their capabilities")
    run = sub.add_parser("run", help="run a Pyro script with pyro.infer's SVI, ELBOs and "
                                     "posteriors bound to this package's (the drop-in switch)")
    run.add_argument("script", help="path of the Python script")
    run.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    opts = parser.parse_args(argv)
    if opts.command == "run":
        return run_script(opts.script, opts.args)
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


def run_script(path: str, args: list[str]) -> int:
    """Run ``path`` as ``__main__`` with ``sys.argv = [path, *args]`` under the drop-in
    switch; returns its exit status."""
    import runpy
    import sys
    from pathlib import Path

    from pyro_svi_ext import dropin

    sys.argv = [path, *args]
    sys.path.insert(0, str(Path(path).resolve().parent))
    dropin.install()
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        dropin.uninstall()
    return 0
