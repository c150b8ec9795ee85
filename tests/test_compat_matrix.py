"""compat_matrix: the pins hold here, a perturbed pin is reported precisely, and the
commands of the README run end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pyro
import pytest

from compat_matrix import cells
from compat_matrix.compare import check_internals, check_parity, check_pins, load_pins, markdown
from compat_matrix.quantities import compute_module, load_module
from pyro_svi_ext.pyro_compat import probe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def here_results():
    steps = cells.load_matrix()["run"]["svi_steps"]
    return {"scenarios": compute_module(load_module("compat_matrix.scenarios"), steps)}


def test_pins_hold_in_this_environment(here_results):
    rows = check_pins("here", here_results, load_pins())
    assert rows and all(r["status"] == "pass" for r in rows), [
        r for r in rows if r["status"] != "pass"]
    scenarios = {r["scenario"] for r in rows}
    assert {"normal_normal", "hmm_enum", "renyi", "tracegraph_baseline"} <= scenarios


def test_our_estimators_agree_with_this_pyro(here_results):
    rows = check_parity("here", here_results)
    compared = [q for values in here_results["scenarios"].values() for q in values
                if q.startswith("ours.") and q != "ours.error"]
    assert len(rows) == len(compared) and all(r["status"] == "pass" for r in rows)
    assert {r["scenario"] for r in rows} == set(here_results["scenarios"])


def test_pyro_internals_work_here_and_a_broken_one_is_reported():
    assert set(probe().values()) == {"ok"}
    rows = check_internals("pyro X", {"pyro_internals": {
        "param store": "AttributeError: 'ParamStoreDict' object has no attribute '_params'",
        "PyroOptim": "ok"}})
    assert [(r["quantity"], r["status"]) for r in rows] == [("param store", "fail"),
                                                           ("PyroOptim", "pass")]
    assert "_params" in rows[0]["why"]


def test_every_pin_states_its_tolerance_and_provenance():
    pins = load_pins()
    assert pins["provenance"]["pyro"] and pins["provenance"]["torch"]
    for quantities in pins["scenarios"].values():
        for pin in quantities.values():
            assert pin["rtol"] > 0 and pin["atol"] > 0 and len(pin["reason"]) > 10


def test_a_perturbed_pin_fails_naming_cell_scenario_and_quantity(here_results, tmp_path):
    pins = load_pins()
    pins["scenarios"]["renyi"]["pyro.loss"]["value"] += 0.01
    rows = check_pins("pyro X / torch Y", here_results, pins)
    (failure,) = [r for r in rows if r["status"] == "fail"]
    assert (failure["cell"], failure["scenario"], failure["quantity"]) == (
        "pyro X / torch Y", "renyi", "pyro.loss")
    assert failure["deviation"] == pytest.approx(0.01, rel=1e-3)
    table = markdown(rows, ["pyro X / torch Y"], {})
    assert "FAIL pins pyro.loss" in table


def test_run_command_reports_a_perturbed_pin(tmp_path):
    pins = load_pins()
    pins["scenarios"]["hmm_enum"]["ours.grads"]["value"]["locs_loc"][0] += 1.0
    perturbed = tmp_path / "pins.json"
    perturbed.write_text(json.dumps(pins))
    proc = subprocess.run(
        [sys.executable, "-m", "compat_matrix", "run", "--pyro", pyro.__version__,
         "--pins", str(perturbed), "--out", str(tmp_path / "report")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cell = f"pyro {pyro.__version__} / torch {cells.running_torch()}"
    assert f"FAIL {cell} | hmm_enum | pins | ours.grads" in proc.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert any(r["status"] == "fail" and r["quantity"] == "ours.grads" for r in report["rows"])


def test_migrate_runs_a_users_scenarios_in_two_cells(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "compat_matrix", "migrate",
         "compat_matrix/examples/my_scenarios.py", "--from", "1.8.6", "--to",
         pyro.__version__, "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "migration.json").read_text())["rows"]
    assert {r["scenario"] for r in rows} == {"my_regression", "my_mixture"}
    assert {r["quantity"] for r in rows} >= {"ours.loss", "pyro.params", "ours.svi_losses"}
    assert "| 1.8.6 | " + pyro.__version__ + " | my_mixture | ours.loss | same |" in proc.stdout
