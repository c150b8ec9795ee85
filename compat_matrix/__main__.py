"""``python -m compat_matrix {run, repin, migrate, suite}`` (also ``pyro-svi-ext compat``).

run      build the cells of matrix.toml, check pins, parity, conformance and Pyro's
         internals in each, write the report
repin    recompute the pins here; show the changes beyond tolerance; write with --yes
migrate  run your scenario module on two or more sides (PYRO[:IMPL][@TORCH]) and
         report every difference, error and missing result
suite    run your pytest suite on two or more sides and diff outcomes per test id

Cells are built in a per-user cache ($PYRO_SVI_EXT_CACHE, else ~/.cache/pyro-svi-ext);
reports go to --out (default ./compat-report). Exit codes: 0 done, 1 a check failed (or,
with --strict, anything differs), 2 refused before building anything.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compat_matrix import cells as cellmod
from compat_matrix import migrate as migration
from compat_matrix import suite as suitemod
from compat_matrix.compare import (
    PINS,
    check_conformance,
    check_internals,
    check_parity,
    check_pins,
    diff_pins,
    load_pins,
    make_pins,
    markdown,
)
from compat_matrix.quantities import compute_module, environment, error_line, load_module
from compat_matrix.versions import RefusedError, Side, check_pyro, parse_side
from pyro_svi_ext.cli import OneLineErrors, positive_int

BUILTIN = "compat_matrix.scenarios"
EXAMPLES = Path(__file__).resolve().parent / "examples"


def _write(out: Path, name: str, table: str, payload: dict, log: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(table + "\n")
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    (out / f"{name}.log").write_text(log)
    print(f"report: {out / (name + '.md')} (table), {out / (name + '.json')} (data), "
          f"{out / (name + '.log')} (full error output)")


def _steps(opts, matrix: dict) -> int:
    return getattr(opts, "steps", None) or matrix.get("run", {}).get("svi_steps", 20)


def cmd_run(opts) -> int:
    start = time.perf_counter()
    matrix = cellmod.load_matrix()
    torches = opts.torch or matrix["axes"]["torch"]
    for version in opts.pyro or []:
        check_pyro(version)
    pins = load_pins(Path(opts.pins))
    rows, skipped, labels, log, timings = [], {}, [], [], {}
    for cell in cellmod.declared_cells(matrix, opts.pyro, torches):
        labels.append(cell.label)
        began = time.perf_counter()
        try:
            results = cellmod.run(cell, BUILTIN, _steps(opts, matrix))
        except cellmod.CellError as why:
            skipped[cell.label] = str(why)
            log.append(f"== {cell.label}\n{why}\n{why.stderr}")
            print(f"{cell.label}: FAILED ({why})", flush=True)
            continue
        timings[cell.label] = time.perf_counter() - began
        cell_rows = (check_pins(cell.label, results, pins) + check_parity(cell.label, results)
                     + check_conformance(cell.label, results)
                     + check_internals(cell.label, results))
        rows += cell_rows
        failed = sum(r["status"] == "fail" for r in cell_rows)
        print(f"{cell.label}: {len(cell_rows) - failed} checks pass, {failed} fail "
              f"({timings[cell.label]:.0f} s)", flush=True)
    table = markdown(rows, labels, skipped)
    elapsed = time.perf_counter() - start
    print(table)
    print(f"matrix ran in {elapsed:.0f} s")
    _write(Path(opts.out), "report", table, {"rows": rows, "unavailable": skipped,
                                             "seconds": elapsed, "cell_seconds": timings},
           "\n".join(log))
    failures = [r for r in rows if r["status"] == "fail"]
    for r in failures[:20]:
        detail = r.get("why") or (f"expected {r.get('expected')} got {r.get('got')} "
                                  f"(max |dev| {r['deviation']:.3g} at {r['where']})")
        print(f"FAIL {r['cell']} | {r['scenario']} | {r['check']} | "
              f"{r.get('quantity', '')} | {detail}")
    return 1 if failures or skipped else 0


def cmd_repin(opts) -> int:
    matrix = cellmod.load_matrix()
    results = compute_module(load_module(BUILTIN), _steps(opts, matrix))
    errors = {f"{s}.{q}": error_line(v) for s, vals in results.items()
              for q, v in vals.items() if q.endswith(".error")}
    if errors:
        print("not re-pinned: scenarios raise here:\n" + "\n".join(
            f"  {k}: {v}" for k, v in errors.items()))
        return 1
    new = make_pins(results, environment(), datetime.date.today().isoformat())
    path = Path(opts.pins)
    old = load_pins(path) if path.exists() else {}
    changes = diff_pins(old, new, every_digit=opts.all)
    scope = "" if opts.all else " beyond tolerance (--all: every digit)"
    print("\n".join(changes) if changes else f"no pin changes{scope}")
    if changes and opts.yes:
        path.write_text(json.dumps(new, indent=1) + "\n")
        print(f"wrote {path}")
    elif changes:
        print(f"not written: pass --yes to re-pin {path}")
    return 0


def _sides(texts: list[str], matrix: dict) -> list[Side]:
    torches = cellmod.declared_torches(matrix)
    return [parse_side(t, cellmod.running_torch(), torches) for t in texts]


def _scenario_module(spec: str) -> str:
    """The scenario module to run in the cells: a file's absolute path, or a dotted name;
    refused (exit 2) when there is no such file or module here."""
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec).resolve()
        if not path.is_file():
            raise RefusedError(f"no scenario file {spec}")
        return str(path)
    try:
        found = importlib.util.find_spec(spec) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise RefusedError(f"no scenario module named {spec!r} (a .py file or a dotted name)")
    return spec


def cmd_migrate(opts) -> int:
    module = _scenario_module(opts.module)
    matrix = cellmod.load_matrix()
    sides = _sides([opts.from_version, *opts.to_versions], matrix)
    results, failed, log = {}, {}, []
    for side in sides:
        cell = cellmod.Cell(side.pyro, side.torch)
        if cell in results or cell.label in failed:
            continue
        try:
            results[cell] = cellmod.run(cell, module, _steps(opts, matrix))["scenarios"]
        except cellmod.CellError as why:
            failed[cell.label] = str(why)
            log.append(f"== {cell.label}\n{why}\n{why.stderr}")
            print(f"{cell.label}: unavailable ({why})", flush=True)
    rows = []
    a = sides[0]
    for b in sides[1:]:
        ca, cb = cellmod.Cell(a.pyro, a.torch), cellmod.Cell(b.pyro, b.torch)
        down = {c.label: failed[c.label] for c in (ca, cb) if c.label in failed}
        if down:
            rows += migration.cell_failure_rows(a, b, down)
            continue
        rows += migration.compare(a, b, results[ca], results[cb])
    for r in rows:
        for label, err in r.get("errors", {}).items():
            log.append(f"== {r['scenario']} on {label}\n{err.get('traceback', '')}")
    table = migration.markdown(rows)
    print(table)
    diffs = migration.differences(rows)
    print(f"{len(diffs)} of {len(rows)} rows differ")
    _write(Path(opts.out), "migration", table,
           {"sides": [s.label for s in sides], "rows": rows, "unavailable": failed},
           "\n".join(log))
    if failed:
        return 1
    return 1 if diffs and opts.strict else 0


def cmd_suite(opts) -> int:
    if not Path(opts.path).exists():
        raise RefusedError(f"no test directory or file {opts.path}")
    matrix = cellmod.load_matrix()
    sides = _sides(opts.sides, matrix)
    labels = [s.label if s.impl else f"{s.pyro}:pyro@{s.torch}" for s in sides]
    by_side, failed, log = {}, {}, []
    for side, label in zip(sides, labels, strict=True):
        cell = cellmod.Cell(side.pyro, side.torch)
        try:
            with cellmod.cell_environment(cell) as (python, env), \
                    tempfile.TemporaryDirectory() as tmp:
                junit = Path(tmp) / "junit.xml"
                proc = subprocess.run(
                    [python, "-m", "compat_matrix.suite", "--impl", side.impl or "pyro",
                     str(junit), "--", *opts.pytest_args, str(Path(opts.path).resolve())],
                    env=env, capture_output=True, text=True)
                log.append(f"== {label} (pytest exit {proc.returncode})\n{proc.stdout}"
                           f"{proc.stderr}")
                if proc.returncode == 5:
                    raise cellmod.CellError("pytest collected no tests")
                if not junit.exists():
                    raise cellmod.CellError(
                        f"pytest failed: {cellmod.summarize_stderr(proc.stdout + proc.stderr)}",
                        proc.stdout + proc.stderr)
                by_side[label] = suitemod.outcomes(junit)
        except cellmod.CellError as why:
            failed[label] = str(why)
            print(f"{label}: unavailable ({why})", flush=True)
    rows = suitemod.diff(labels[0], by_side) if labels[0] in by_side else []
    table = suitemod.markdown(by_side, rows)
    if failed:
        table += "\n\n" + "\n".join(f"- {k} unavailable: {v}" for k, v in failed.items())
    print(table)
    _write(Path(opts.out), "suite", table, {"sides": labels, "outcomes": by_side,
                                            "changes": rows, "unavailable": failed},
           "\n".join(log))
    if failed:
        return 1
    return 1 if rows and opts.strict else 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrors(prog="python -m compat_matrix", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    out = {"default": str(Path.cwd() / "compat-report"),
           "help": "directory for the report (default ./compat-report)"}
    run = sub.add_parser("run", help="build cells, check pins and parity, write the report")
    run.add_argument("--pyro", nargs="+", help="only these pyro versions")
    run.add_argument("--torch", nargs="+", help="these torch versions (default: the CI "
                     "axis of matrix.toml; its slow tier must be named)")
    run.add_argument("--pins", default=str(PINS))
    run.add_argument("--out", **out)
    repin = sub.add_parser("repin", help="recompute pins here; show changes beyond tolerance")
    repin.add_argument("--yes", action="store_true", help="write the new pins")
    repin.add_argument("--all", action="store_true", help="show changes of any size")
    repin.add_argument("--pins", default=str(PINS))
    mig = sub.add_parser("migrate", help="compare your scenarios across versions and "
                         "implementations")
    mig.add_argument("module", help="scenario module: a .py file or a dotted name (e.g. "
                     f"{EXAMPLES / 'my_scenarios.py'})")
    mig.add_argument("--from", dest="from_version", required=True,
                     metavar="PYRO[:IMPL][@TORCH]")
    mig.add_argument("--to", dest="to_versions", nargs="+", required=True,
                     metavar="PYRO[:IMPL][@TORCH]")
    mig.add_argument("--steps", type=positive_int)
    mig.add_argument("--strict", action="store_true",
                     help="exit 1 on any difference, error or missing result")
    mig.add_argument("--out", **out)
    st = sub.add_parser("suite", help="run your pytest suite on several sides; diff outcomes")
    st.add_argument("path", help="the test directory or file (e.g. "
                    f"{EXAMPLES / 'suite'})")
    st.add_argument("--sides", nargs="+", required=True, metavar="PYRO[:IMPL][@TORCH]",
                    help="the first is the reference; IMPL defaults to pyro (as written)")
    st.add_argument("--strict", action="store_true", help="exit 1 if any outcome changed")
    st.add_argument("--out", **out)
    st.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest")
    opts = parser.parse_args(argv)
    commands = {"run": cmd_run, "repin": cmd_repin, "migrate": cmd_migrate,
                "suite": cmd_suite}
    try:
        return commands[opts.command](opts)
    except RefusedError as why:
        print(f"refused: {why}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
