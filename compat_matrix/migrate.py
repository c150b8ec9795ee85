"""What changed between two sides (:class:`compat_matrix.versions.Side`) on the same
scenarios: every quantity compared within its tolerance, and every error, missing
scenario and missing quantity reported as a difference (never skipped)."""

from __future__ import annotations

from compat_matrix.compare import deviation
from compat_matrix.quantities import TOLERANCES, error_line
from compat_matrix.schema import IMPLEMENTATIONS
from compat_matrix.versions import Side

SAME, CHANGED, ERROR, MISSING = "same", "CHANGED", "ERROR", "MISSING"


def impl_pairs(a: Side, b: Side) -> list[tuple[str, str]]:
    """Which implementation of side ``a`` is compared with which of ``b``: the one named
    on each side, else the same implementation on both, for each."""
    if a.impl or b.impl:
        return [(a.impl or b.impl, b.impl or a.impl)]
    return [(impl, impl) for impl in IMPLEMENTATIONS]


def _quantity(ia: str, ib: str, q: str) -> str:
    return f"{ia}.{q}" if ia == ib else f"{q} ({ia} vs {ib})"


def compare_scenario(a: Side, b: Side, scenario: str, va: dict, vb: dict) -> list[dict]:
    rows = []
    base = {"from": a.label, "to": b.label, "scenario": scenario}
    for ia, ib in impl_pairs(a, b):
        ea, eb = va.get(f"{ia}.error"), vb.get(f"{ib}.error")
        if ea or eb:
            if ea and eb:
                detail = (f"raises on both: {a.label}: {error_line(ea)}; "
                          f"{b.label}: {error_line(eb)}")
            else:
                detail = f"raises on {a.label if ea else b.label} only: {error_line(ea or eb)}"
            rows.append({**base, "quantity": _quantity(ia, ib, "*"), "status": ERROR,
                         "detail": detail,
                         "errors": {side.label: e for side, e in ((a, ea), (b, eb)) if e}})
            continue
        qa = {q.split(".", 1)[1] for q in va if q.startswith(ia + ".")}
        qb = {q.split(".", 1)[1] for q in vb if q.startswith(ib + ".")}
        for q in sorted(qa | qb):
            row = {**base, "quantity": _quantity(ia, ib, q)}
            if q not in qa or q not in qb:
                missing = a.label if q not in qa else b.label
                rows.append({**row, "status": MISSING, "detail": f"not computed on {missing}"})
                continue
            rtol, atol, _ = TOLERANCES[q]
            ok, worst, where = deviation(vb[f"{ib}.{q}"], va[f"{ia}.{q}"], rtol, atol)
            rows.append({**row, "status": SAME if ok else CHANGED, "deviation": worst,
                         "where": where,
                         "detail": "" if ok else f"max |dev| {worst:.3g} at {where}"})
    return rows


def compare(a: Side, b: Side, ra: dict, rb: dict) -> list[dict]:
    """Rows for every scenario of either side (``ra``/``rb``: the worker's
    ``scenarios`` of each)."""
    rows = []
    for scenario in sorted(set(ra) | set(rb)):
        if scenario not in ra or scenario not in rb:
            missing = a.label if scenario not in ra else b.label
            rows.append({"from": a.label, "to": b.label, "scenario": scenario,
                         "quantity": "*", "status": MISSING,
                         "detail": f"scenario not run on {missing}"})
            continue
        rows += compare_scenario(a, b, scenario, ra[scenario], rb[scenario])
    return rows


def cell_failure_rows(a: Side, b: Side, failed: dict[str, str]) -> list[dict]:
    """One ERROR row per side whose cell could not be built or run."""
    return [{"from": a.label, "to": b.label, "scenario": "*", "quantity": "*",
             "status": ERROR, "detail": f"cell {label} unavailable: {why}"}
            for label, why in failed.items()]


def markdown(rows: list[dict]) -> str:
    lines = ["| from | to | scenario | quantity | result |", "|---|---|---|---|---|"]
    for r in rows:
        verdict = r["status"] + (f": {r['detail']}" if r.get("detail") else "")
        lines.append(f"| {r['from']} | {r['to']} | {r['scenario']} | {r['quantity']} | "
                     f"{verdict.replace('|', '/')} |")
    return "\n".join(lines)


def differences(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] != SAME]
