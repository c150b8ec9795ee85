"""Test-suite mode: a user's pytest suite run in each selected cell, outcomes diffed per
test id.

In a cell, ``python -m compat_matrix.suite --impl ours|pyro JUNIT -- PYTEST_ARGS`` runs
pytest with a JUnit XML report; ``ours`` turns the drop-in switch on (the
``--pyro-svi-ext`` option of the pytest plugin, ``_pyro_svi_ext_pytestplugin``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"


#: the pytest plugin's module (and entry point name)
PLUGIN = "_pyro_svi_ext_pytestplugin"


def _plugin_registered() -> bool:
    return any(ep.value == PLUGIN
               for ep in importlib.metadata.entry_points(group="pytest11"))


def pytest_argv(impl: str, junit: str, args: list[str]) -> list[str]:
    """pytest's arguments for ``impl``: the switch for ``ours`` (loading the plugin by
    name where the package is not installed, so it has no entry point)."""
    argv = [f"--junitxml={junit}", "-p", "no:cacheprovider", *args]
    if impl == "ours":
        load = [] if _plugin_registered() else ["-p", PLUGIN]
        argv = [*load, "--pyro-svi-ext", *argv]
    return argv


def outcomes(junit: Path) -> dict[str, dict]:
    """``{test id: {"outcome": ..., "message": first line}}`` from a JUnit XML file."""
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = PASSED, ""
        for tag, name in (("failure", FAILED), ("error", ERROR), ("skipped", SKIPPED)):
            node = case.find(tag)
            if node is not None:
                outcome = name
                text = (node.get("message") or node.text or "").strip().splitlines()
                message = text[0] if text else ""
                break
        results[test_id] = {"outcome": outcome, "message": message}
    return results


def diff(reference: str, by_side: dict[str, dict[str, dict]]) -> list[dict]:
    """Rows for each test whose outcome on a side differs from ``reference``'s (or that
    exists on one side only)."""
    rows = []
    base = by_side[reference]
    for label, results in by_side.items():
        if label == reference:
            continue
        for test_id in sorted(set(base) | set(results)):
            a, b = base.get(test_id), results.get(test_id)
            if a and b and a["outcome"] == b["outcome"]:
                continue
            rows.append({"test": test_id, "from": reference, "to": label,
                         "was": a["outcome"] if a else "absent",
                         "now": b["outcome"] if b else "absent",
                         "message": (b or {}).get("message") or (a or {}).get("message", "")})
    return rows


def markdown(by_side: dict[str, dict[str, dict]], rows: list[dict]) -> str:
    counts = ["| side | passed | failed | error | skipped |", "|---|---|---|---|---|"]
    for label, results in by_side.items():
        n = {k: sum(r["outcome"] == k for r in results.values())
             for k in (PASSED, FAILED, ERROR, SKIPPED)}
        counts.append(f"| {label} | {n[PASSED]} | {n[FAILED]} | {n[ERROR]} | {n[SKIPPED]} |")
    changes = ["| test | from | to | outcome | first error line |", "|---|---|---|---|---|"]
    for r in rows:
        changes.append(f"| {r['test']} | {r['from']} | {r['to']} | {r['was']} -> {r['now']} "
                       f"| {r['message'].replace('|', '/')} |")
    return "\n".join([*counts, "", *(changes if rows else ["no test changed outcome"])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compat_matrix.suite")
    parser.add_argument("--impl", choices=("ours", "pyro"), required=True)
    parser.add_argument("junit")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    import pytest

    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    return int(pytest.main(pytest_argv(opts.impl, opts.junit, args)))


if __name__ == "__main__":
    sys.exit(main())
