"""A pytest plugin for the upstream tier (``-p fallback_census``): after each test, the
compile reports of the compiled steps it made, one JSON line each, to the file named
by ``PYRO_SVI_EXT_CENSUS``. It also checks every simplified graph against the recorded
one (``verify.CHECK_PASSES``), as this package's own suite does."""

from __future__ import annotations

import json
import os

import pytest

OUT = os.environ.get("PYRO_SVI_EXT_CENSUS", "census.jsonl")


def pytest_configure(config) -> None:
    from pyro_svi_ext.compile import report, verify

    report.keep_reports()
    verify.CHECK_PASSES[0] = True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    from pyro_svi_ext.compile import report

    kept = report.keep_reports()
    yield
    with open(OUT, "a") as out:
        for each in kept:
            out.write(json.dumps({"test": item.nodeid, **each.as_dict()}, default=str) + "\n")
