"""Run one of Pyro's example scripts, with Pyro's classes or under the drop-in switch.

``python run_example.py [--dropin | --compile] [--version V] [--seed S] SCRIPT [ARGS...]``

``--compile`` is the drop-in switch with Pyro's eager ELBO names bound to compiled
steps (``install(compile=True)``).

Pyro's examples assert the Pyro version of the checkout they come from
(``assert pyro.__version__.startswith(...)``); ``--version`` reports that version to
the script, the same way for both runs, so a checkout one patch release away from the
installed Pyro can be used.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    dropin = "--dropin" in argv or "--compile" in argv
    compile_steps = "--compile" in argv
    argv = [a for a in argv if a not in ("--dropin", "--compile")]
    version = seed = None
    while argv[:1] in (["--version"], ["--seed"]):
        if argv[0] == "--version":
            version = argv[1]
        else:
            seed = int(argv[1])
        argv = argv[2:]
    script, args = argv[0], argv[1:]
    import pyro

    if version is not None:
        pyro.__version__ = version
    if seed is not None:  # examples that draw their initial values without a seed
        pyro.set_rng_seed(seed)
    if dropin:
        import pyro_svi_ext

        pyro_svi_ext.install(compile=compile_steps)
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
