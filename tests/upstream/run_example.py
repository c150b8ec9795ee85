"""Run one of Pyro's example scripts, with Pyro's classes or under the drop-in switch.

``python run_example.py [--dropin] [--version V] [--seed S] SCRIPT [ARGS...]``

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
    dropin = "--dropin" in argv
    argv = [a for a in argv if a != "--dropin"]
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

        pyro_svi_ext.install()
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
