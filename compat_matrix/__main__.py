"""``python -m compat_matrix {run, repin, migrate}``.

run      build the cells of matrix.toml, check pins and parity in each, write the report
repin    recompute the pins in the current environment; prints the diff; writes with --yes
migrate  run your own scenario module in two or more cells and report what changed
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from compat_matrix import cells as cellmod
from compat_matrix.compare import (
    PINS,
    check_conformance,
    check_internals,
    check_parity,
    check_pins,
    deviation,
    diff_pins,
    kind,
    load_pins,
    make_pins,
    markdown,
)
from compat_matrix.quantities import TOLERANCES, compute_module, environment, load_module

BUILTIN = "compat_matrix.scenarios"
DEFAULT_OUT = Path(__file__).resolve().parent / "report"


def _write(out: Path, name: str, table: str, payload: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(table + "\n")
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))


def cmd_run(opts) -> int:
    start = time.perf_counter()
    matrix = cellmod.load_matrix()
    steps = matrix.get("run", {}).get("svi_steps", 20)
    pins = load_pins(Path(opts.pins))
    rows, skipped, labels = [], {}, []
    for cell in cellmod.declared_cells(matrix, opts.pyro):
        labels.append(cell.label)
        try:
            results = cellmod.run(cell, BUILTIN, steps, opts.with_manual)
        except cellmod.CellUnavailableError as why:
            skipped[cell.label] = str(why)
            print(f"{cell.label}: skipped ({why})", flush=True)
            continue
        cell_rows = (check_pins(cell.label, results, pins) + check_parity(cell.label, results)
                     + check_conformance(cell.label, results)
                     + check_internals(cell.label, results))
        rows += cell_rows
        failed = sum(r["status"] == "fail" for r in cell_rows)
        print(f"{cell.label}: {len(cell_rows) - failed} checks pass, {failed} fail",
              flush=True)
    table = markdown(rows, labels, skipped)
    elapsed = time.perf_counter() - start
    print(table)
    print(f"pyro axis ran in {elapsed:.0f} s")
    _write(Path(opts.out), "report", table, {"rows": rows, "skipped": skipped,
                                             "seconds": elapsed})
    failures = [r for r in rows if r["status"] == "fail"]
    for r in failures[:20]:
        detail = r.get("why") or (f"expected {r.get('expected')} got {r.get('got')} "
                                  f"(max |dev| {r['deviation']:.3g} at {r['where']})")
        print(f"FAIL {r['cell']} | {r['scenario']} | {r['check']} | "
              f"{r.get('quantity', '')} | {detail}")
    return 1 if failures else 0


def cmd_repin(opts) -> int:
    matrix = cellmod.load_matrix()
    steps = matrix.get("run", {}).get("svi_steps", 20)
    results = compute_module(load_module(BUILTIN), steps)
    new = make_pins(results, environment(), datetime.date.today().isoformat())
    path = Path(opts.pins)
    old = load_pins(path) if path.exists() else {}
    changes = diff_pins(old, new)
    print("\n".join(changes) if changes else "pins unchanged")
    if changes and opts.yes:
        path.write_text(json.dumps(new, indent=1) + "\n")
        print(f"wrote {path}")
    elif changes:
        print("not written: pass --yes to re-pin")
    return 0


def cmd_migrate(opts) -> int:
    matrix = cellmod.load_matrix()
    steps = opts.steps or matrix.get("run", {}).get("svi_steps", 20)
    module = str(Path(opts.module).resolve()) if opts.module.endswith(".py") else opts.module
    torch_version = cellmod.running_torch()
    versions = [opts.from_version, *opts.to_versions]
    results = {}
    for version in versions:
        cell = cellmod.Cell(version, torch_version)
        results[version] = cellmod.run(cell, module, steps)["scenarios"]
    reference = results[versions[0]]
    rows = []
    for version in versions[1:]:
        for scenario, values in reference.items():
            other = results[version].get(scenario, {})
            for quantity in sorted(values):
                if quantity.endswith(".error") or quantity not in other:
                    continue
                rtol, atol, _ = TOLERANCES[kind(quantity)]
                ok, worst, where = deviation(other[quantity], values[quantity], rtol, atol)
                rows.append({"from": versions[0], "to": version, "scenario": scenario,
                             "quantity": quantity, "changed": not ok, "deviation": worst,
                             "where": where})
    lines = ["| from | to | scenario | quantity | result |", "|---|---|---|---|---|"]
    for r in rows:
        verdict = (f"CHANGED: max |dev| {r['deviation']:.3g} at {r['where']}" if r["changed"]
                   else "same")
        lines.append(f"| {r['from']} | {r['to']} | {r['scenario']} | {r['quantity']} | "
                     f"{verdict} |")
    table = "\n".join(lines)
    print(table)
    _write(Path(opts.out), "migration", table, {"rows": rows})
    return 1 if any(r["changed"] for r in rows) and opts.strict else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compat_matrix", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="build cells, check pins and parity, write the report")
    run.add_argument("--pyro", nargs="+", help="only these pyro versions")
    run.add_argument("--with-manual", action="store_true", help="also build manual cells")
    run.add_argument("--pins", default=str(PINS))
    run.add_argument("--out", default=str(DEFAULT_OUT))
    repin = sub.add_parser("repin", help="recompute pins here; print the diff")
    repin.add_argument("--yes", action="store_true", help="write the new pins")
    repin.add_argument("--pins", default=str(PINS))
    migrate = sub.add_parser("migrate", help="compare your scenarios across pyro versions")
    migrate.add_argument("module", help="scenario module: a .py file or a dotted name")
    migrate.add_argument("--from", dest="from_version", required=True)
    migrate.add_argument("--to", dest="to_versions", nargs="+", required=True)
    migrate.add_argument("--steps", type=int)
    migrate.add_argument("--strict", action="store_true", help="exit 1 if anything changed")
    migrate.add_argument("--out", default=str(DEFAULT_OUT))
    opts = parser.parse_args(argv)
    return {"run": cmd_run, "repin": cmd_repin, "migrate": cmd_migrate}[opts.command](opts)


if __name__ == "__main__":
    sys.exit(main())
