"""Command line: ``pyro-svi-ext demo``, ``pyro-svi-ext list``,
``pyro-svi-ext run SCRIPT [ARGS...]`` (an unchanged Pyro script on the plugin) and
``pyro-svi-ext compat run|repin|migrate|suite ...`` (the compatibility matrix and
migration tools, :mod:`compat_matrix`, shipped in the same distribution)."""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    from pyro_svi_ext import __version__

    parser = argparse.ArgumentParser(prog="pyro-svi-ext")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="Bayesian regression on the bundled diabetes data")
    demo.add_argument("--steps", type=_positive_int, default=3000, help="SVI steps (>= 1)")
    demo.add_argument("--plot", default="pyro_svi_ext_demo.png",
                      help="where to write the loss curve ('' for none; needs matplotlib)")
    sub.add_parser("list", help="registered estimators with their capabilities")
    run = sub.add_parser("run", help="run a Pyro script with pyro.infer's SVI, ELBOs and "
                                     "posteriors bound to this package's (the drop-in switch)")
    run.add_argument("--compile", action="store_true",
                     help="also bind Pyro's eager ELBO names to compiled steps")
    run.add_argument("script", help="path of the Python script")
    run.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    compat = sub.add_parser("compat", add_help=False,
                            help="compatibility matrix and migration testing (run, repin, "
                                 "migrate, suite; --help for each)")
    compat.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    if opts.command == "compat":
        return run_compat(opts.args)
    if opts.command == "run":
        return run_script(opts.script, opts.args, compile=opts.compile)
    if opts.command == "demo":
        from pyro_svi_ext.demo import main as demo_main

        demo_main(opts.steps, opts.plot or None)
    else:
        from pyro_svi_ext import registry

        for r in registry.available():
            caps = ", ".join(f"{k}={v}" for k, v in vars(r.capabilities).items())
            print(f"{r.name}  aliases={list(r.aliases)}  plugin={r.plugin}\n  {r.signature}\n"
                  f"  {caps}")
    return 0


def run_compat(args: list[str]) -> int:
    """``python -m compat_matrix ARGS`` in a child process (the matrix compares against
    ``pyro.infer``, which this package itself never imports)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "compat_matrix", *args]).returncode


def run_script(path: str, args: list[str], compile: bool = False) -> int:
    """Run ``path`` as ``__main__`` with ``sys.argv = [path, *args]`` under the drop-in
    switch (``compile``: with compiled steps for the eager ELBO names); returns its exit
    status."""
    import runpy
    import sys
    from pathlib import Path

    from pyro_svi_ext import dropin

    sys.argv = [path, *args]
    sys.path.insert(0, str(Path(path).resolve().parent))
    dropin.install(compile=compile)
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        dropin.uninstall()
    return 0
