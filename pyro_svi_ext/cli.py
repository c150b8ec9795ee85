"""Command line: ``pyro-svi-ext demo``, ``pyro-svi-ext list``,
``pyro-svi-ext run SCRIPT [ARGS...]`` (an unchanged Pyro script on the plugin) and
``pyro-svi-ext compat run|repin|migrate|suite ...`` (the compatibility matrix and
migration tools, :mod:`compat_matrix`, shipped in the same distribution).

``--help`` works at every level (``pyro-svi-ext compat --help``, ``pyro-svi-ext compat
migrate --help``). A bad argument or a missing file exits with status 2 and one line on
stderr saying what is wrong."""

from __future__ import annotations

import argparse
import sys


class OneLineErrors(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (``prog: error: ...``,
    pointing at ``--help``) and exit status 2, instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def fail(prog: str, message: str) -> int:
    """Say ``message`` in one line on stderr; the exit status of a refused command (2)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    from pyro_svi_ext import __version__

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compat"]:  # its own parser answers, --help included
        return run_compat(argv[1:])
    parser = OneLineErrors(prog="pyro-svi-ext")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="Bayesian regression on the bundled diabetes data")
    demo.add_argument("--steps", type=positive_int, default=3000, help="SVI steps (>= 1)")
    demo.add_argument("--plot", default=None, metavar="PATH",
                      help="where to write the loss curve (default: demo-loss.png in the "
                           "per-user cache, $PYRO_SVI_EXT_CACHE or ~/.cache/pyro-svi-ext; "
                           "'' for none; needs matplotlib)")
    sub.add_parser("list", help="registered estimators with their capabilities")
    run = sub.add_parser("run", help="run a Pyro script with pyro.infer's SVI, ELBOs and "
                                     "posteriors bound to this package's (the drop-in switch)")
    run.add_argument("--compile", action="store_true",
                     help="also bind Pyro's eager ELBO names to compiled steps")
    run.add_argument("--report", action="store_true",
                     help="at the end, print what each compiled step did (graphs, "
                          "backends, swaps, recompiles, sentinel checks, fallbacks with "
                          "the line that caused them) on stderr")
    run.add_argument("script", help="path of the Python script")
    run.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    sub.add_parser("compat", add_help=False,
                   help="compatibility matrix and migration testing (run, repin, migrate, "
                        "suite; --help for each)")
    opts = parser.parse_args(argv)
    if opts.command == "run":
        return run_script(opts.script, opts.args, compile=opts.compile, report=opts.report)
    if opts.command == "demo":
        from pyro_svi_ext.demo import default_plot_path
        from pyro_svi_ext.demo import main as demo_main

        demo_main(opts.steps, default_plot_path() if opts.plot is None else opts.plot or None)
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

    return subprocess.run([sys.executable, "-m", "compat_matrix", *args]).returncode


def run_script(path: str, args: list[str], compile: bool = False,
               report: bool = False) -> int:
    """Run ``path`` as ``__main__`` with ``sys.argv = [path, *args]`` under the drop-in
    switch (``compile``: with compiled steps for the eager ELBO names; ``report``: then
    print every compiled step's report on stderr); returns its exit status; 2 (one line
    on stderr) when ``path`` is not a file."""
    import runpy
    from pathlib import Path

    from pyro_svi_ext import dropin

    if not Path(path).is_file():
        return fail("pyro-svi-ext run", f"no such script: {path}")
    sys.argv = [path, *args]
    sys.path.insert(0, str(Path(path).resolve().parent))
    dropin.install(compile=compile)
    if report:
        from pyro_svi_ext.compile.report import keep_reports

        reports = keep_reports()
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        dropin.uninstall()
        if report:
            print_reports(reports)
    return 0


def print_reports(reports: list) -> None:
    """Compiled steps' reports, on stderr."""
    print(f"pyro-svi-ext: {len(reports)} compiled step(s)", file=sys.stderr)
    for each in reports:
        print(each, file=sys.stderr)
