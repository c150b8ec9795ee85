"""pytest plugin of pyro-svi-ext: ``pytest --pyro-svi-ext`` runs a test suite with
``pyro.infer``'s names bound to this package's classes (the drop-in switch,
:mod:`pyro_svi_ext.dropin`); ``--pyro-svi-ext-compile`` binds Pyro's eager ELBO names
to compiled steps as well.

A top-level module outside the package, registered through the ``pytest11`` entry point
under its own name (the pattern of Hypothesis's ``_hypothesis_pytestplugin``): pytest
loads it in every run of every project in the environment, so it imports nothing but
the standard library until one of its options is given. Only then, in
``pytest_configure`` (before test modules are collected, so their
``from pyro.infer import SVI`` already takes this package's class), does it import
``pyro_svi_ext`` (torch, Pyro). ``pytest -p _pyro_svi_ext_pytestplugin --pyro-svi-ext``
works too (the entry point's name is the module's, so autoload sees it registered).
"""

from __future__ import annotations

OPTION = "--pyro-svi-ext"
COMPILE_OPTION = "--pyro-svi-ext-compile"


def pytest_addoption(parser) -> None:
    group = parser.getgroup("pyro_svi_ext")
    group.addoption(OPTION, action="store_true", default=False,
                    help="run the suite on pyro_svi_ext's implementations of pyro.infer's "
                         "SVI, ELBOs and posteriors (the drop-in switch)")
    group.addoption(COMPILE_OPTION, action="store_true", default=False,
                    help="the drop-in switch with Pyro's eager ELBO names bound to "
                         "compiled steps (install(compile=True))")


def _mode(config) -> bool | None:
    """None: switch off; else whether it compiles."""
    if config.getoption(COMPILE_OPTION):
        return True
    return False if config.getoption(OPTION) else None


def pytest_configure(config) -> None:
    mode = _mode(config)
    if mode is not None:
        from pyro_svi_ext import dropin

        dropin.install(compile=mode)


def pytest_unconfigure(config) -> None:
    if _mode(config) is not None:
        from pyro_svi_ext import dropin

        dropin.uninstall()


def pytest_report_header(config) -> str | None:
    mode = _mode(config)
    if mode is not None:
        import pyro_svi_ext

        return (f"pyro_svi_ext {pyro_svi_ext.__version__}: drop-in switch on "
                "(pyro.infer's SVI, ELBOs and posteriors are pyro_svi_ext's"
                + ("; eager ELBO names compiled)" if mode else ")"))
    return None
