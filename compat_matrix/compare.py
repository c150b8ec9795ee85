"""Checks of cell results (against pins, and ours against Pyro's), and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

from compat_matrix.quantities import TOLERANCES, error_line

PINS = Path(__file__).resolve().parent / "pins.json"


def flatten(value, prefix: str = "") -> dict[str, float]:
    """Nested dicts/lists of numbers -> ``{path: number}``."""
    if isinstance(value, dict):
        out = {}
        for k in sorted(value):
            out.update(flatten(value[k], f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: float(value)}


def kind(quantity: str) -> str:
    return quantity.split(".", 1)[1]


def deviation(got, expected, rtol: float, atol: float) -> tuple[bool, float, str]:
    """``(within tolerance, largest |got - expected|, where)``."""
    g, e = flatten(got), flatten(expected)
    if g.keys() != e.keys():
        return False, math.inf, f"different entries: {sorted(set(g) ^ set(e))[:4]}"
    worst, where, ok = 0.0, "", True
    for key in e:
        diff = abs(g[key] - e[key])
        if not math.isfinite(diff) and g[key] != e[key]:
            diff = math.inf
        if diff > atol + rtol * abs(e[key]):
            ok = False
        if diff >= worst:
            worst, where = diff, key
    return ok, worst, where


def check_pins(label: str, results: dict, pins: dict) -> list[dict]:
    rows = []
    for scenario, pinned in pins["scenarios"].items():
        got = results["scenarios"].get(scenario)
        if got is None:
            rows.append({"cell": label, "scenario": scenario, "check": "pins",
                         "status": "skipped", "why": "scenario not run"})
            continue
        for quantity, pin in pinned.items():
            row = {"cell": label, "scenario": scenario, "check": "pins", "quantity": quantity}
            if quantity not in got:
                error = got.get(quantity.split(".")[0] + ".error")
                rows.append({**row, "status": "fail",
                             "why": error_line(error) if error else "not computed"})
                continue
            ok, worst, where = deviation(got[quantity], pin["value"], pin["rtol"], pin["atol"])
            rows.append({**row, "status": "pass" if ok else "fail", "deviation": worst,
                         "where": where, "expected": flatten(pin["value"]).get(where),
                         "got": flatten(got[quantity]).get(where)})
    return rows


def check_parity(label: str, results: dict) -> list[dict]:
    """This package's quantities against the same cell's Pyro, per scenario."""
    rows = []
    for scenario, values in results["scenarios"].items():
        for quantity in sorted(q for q in values if q.startswith("ours.") and q != "ours.error"):
            theirs = "pyro." + kind(quantity)
            row = {"cell": label, "scenario": scenario, "check": "parity", "quantity": quantity}
            if theirs not in values:
                rows.append({**row, "status": "skipped",
                             "why": error_line(values.get("pyro.error",
                                                          "Pyro's value missing"))})
                continue
            rtol, atol, _ = TOLERANCES[kind(quantity)]
            ok, worst, where = deviation(values[quantity], values[theirs], rtol, atol)
            rows.append({**row, "status": "pass" if ok else "fail", "deviation": worst,
                         "where": where})
        if "ours.error" in values:
            rows.append({"cell": label, "scenario": scenario, "check": "parity",
                         "status": "fail", "why": error_line(values["ours.error"])})
    return rows


def check_conformance(label: str, results: dict) -> list[dict]:
    """One row per class of the drop-in contract (:mod:`compat_matrix.conformance`) as
    computed in the cell: pass when the plugin has all of that Pyro's parameters,
    members and hooks (documented differences aside)."""
    rows = []
    for row in results.get("conformance", []):
        missing = row["missing"]
        rows.append({"cell": label, "scenario": "conformance", "check": "conformance",
                     "quantity": row["class"], "status": "fail" if missing else "pass",
                     **({"why": "; ".join(missing)} if missing else {}),
                     "documented": row["documented"]})
    return rows


def check_internals(label: str, results: dict) -> list[dict]:
    """One row per group of Pyro internals the package reaches through its adapter
    (:func:`pyro_svi_ext.pyro_compat.probe`, run in the cell): pass when each still
    works in that Pyro."""
    return [{"cell": label, "scenario": "pyro internals", "check": "internals",
             "quantity": name, "status": "pass" if outcome == "ok" else "fail",
             **({} if outcome == "ok" else {"why": outcome})}
            for name, outcome in results.get("pyro_internals", {}).items()]


def summarize(rows: list[dict]) -> dict[tuple[str, str], str]:
    """``{(cell, scenario): "pass" | "FAIL <check> <quantity> (dev ...)" | "skipped: ..."}``."""
    cells: dict = {}
    for row in rows:
        key = (row["cell"], row["scenario"])
        if row["status"] == "fail":
            if not cells.get(key, "").startswith("FAIL"):
                detail = row.get("why") or (f"max |dev| {row['deviation']:.3g} at "
                                            f"{row['where']}")
                cells[key] = f"FAIL {row['check']} {row.get('quantity', '')}: {detail}"
        elif row["status"] == "skipped" and key not in cells:
            cells[key] = f"skipped: {row['why']}"
        else:
            cells.setdefault(key, "pass")
    return cells


def markdown(rows: list[dict], cell_labels: list[str], skipped: dict[str, str]) -> str:
    summary = summarize(rows)
    scenarios = sorted({s for _, s in summary})
    lines = ["| cell | " + " | ".join(scenarios) + " |",
             "|---|" + "---|" * len(scenarios)]
    notes = []
    for label in cell_labels:
        if label in skipped:
            lines.append(f"| {label} | " + " | ".join("skipped" for _ in scenarios) + " |")
            notes.append(f"- {label} skipped: {skipped[label]}")
            continue
        lines.append(f"| {label} | " + " | ".join(summary.get((label, s), "-")
                                                  for s in scenarios) + " |")
    return "\n".join(lines + (["", *notes] if notes else []))


def load_pins(path: Path = PINS) -> dict:
    return json.loads(path.read_text())


def make_pins(results: dict, environment: dict, date: str) -> dict:
    """Pins from one environment's results, with per-kind tolerances and their reasons."""
    scenarios = {}
    for scenario, values in results.items():
        scenarios[scenario] = {}
        for quantity, value in sorted(values.items()):
            if quantity.endswith(".error"):
                continue
            rtol, atol, reason = TOLERANCES[kind(quantity)]
            scenarios[scenario][quantity] = {"value": value, "rtol": rtol, "atol": atol,
                                             "reason": reason}
    return {"provenance": {**environment, "date": date}, "scenarios": scenarios}


def diff_pins(old: dict, new: dict, every_digit: bool = False) -> list[str]:
    """Lines for what re-pinning would change: added (``+``) and removed (``-``)
    quantities, and (``~``) values that moved beyond the old pin's tolerance, or by any
    amount with ``every_digit``."""
    lines = []
    for scenario in sorted(set(old.get("scenarios", {})) | set(new["scenarios"])):
        a = old.get("scenarios", {}).get(scenario, {})
        b = new["scenarios"].get(scenario, {})
        for quantity in sorted(set(a) | set(b)):
            if quantity not in a:
                lines.append(f"+ {scenario} {quantity}")
            elif quantity not in b:
                lines.append(f"- {scenario} {quantity}")
            else:
                rtol, atol = (0, 0) if every_digit else (a[quantity]["rtol"],
                                                         a[quantity]["atol"])
                ok, worst, where = deviation(b[quantity]["value"], a[quantity]["value"],
                                             rtol, atol)
                if not ok:
                    beyond = "" if every_digit else f" (beyond rtol {rtol:g}, atol {atol:g})"
                    lines.append(f"~ {scenario} {quantity}: max |change| {worst:.3g} at "
                                 f"{where}{beyond}")
    return lines
