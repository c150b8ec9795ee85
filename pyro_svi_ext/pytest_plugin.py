"""pytest plugin: ``pytest --pyro-svi-ext`` runs a test suite with ``pyro.infer``'s names
bound to this package's classes (the drop-in switch, :mod:`pyro_svi_ext.dropin`).

Registered through the ``pytest11`` entry point, so it is available wherever the
package is installed; without the option it does nothing (and imports nothing of the
package). The switch is installed before test modules are collected, so their
``from pyro.infer import SVI`` already takes this package's class.
"""

from __future__ import annotations

OPTION = "--pyro-svi-ext"


def pytest_addoption(parser) -> None:
    group = parser.getgroup("pyro_svi_ext")
    group.addoption(OPTION, action="store_true", default=False,
                    help="run the suite on pyro_svi_ext's implementations of pyro.infer's "
                         "SVI, ELBOs and posteriors (the drop-in switch)")


def pytest_configure(config) -> None:
    if config.getoption(OPTION):
        from pyro_svi_ext import dropin

        dropin.install()


def pytest_unconfigure(config) -> None:
    if config.getoption(OPTION):
        from pyro_svi_ext import dropin

        dropin.uninstall()


def pytest_report_header(config) -> str | None:
    if config.getoption(OPTION):
        import pyro_svi_ext

        return (f"pyro_svi_ext {pyro_svi_ext.__version__}: drop-in switch on "
                "(pyro.infer's SVI, ELBOs and posteriors are pyro_svi_ext's)")
    return None
