"""The GPU check's dry run (``benchmarks/gpu/check.sh --cpu``): every phase of the
script the GPU machine will run, on this machine's CPU at tiny sizes, so that the
script cannot rot while no GPU is lent. About 20-45 s on 2 cores."""

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PHASES = ["setup", "versions", "cuda_tier", "benchmark", "numpyro", "report"]
#: what a phase of the dry run may say instead of "ok"
SKIPS = {"setup": "skipped: --cpu runs on this environment's packages",
         "numpyro": "skipped: numpyro not installed"}


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="check.sh needs bash and coreutils' timeout")
def test_the_gpu_check_runs_every_phase_on_the_cpu(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYRO_SVI_EXT_TEST_", "PYTEST_"))}
    env["PYTHON"] = sys.executable
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/check.sh"), "--cpu", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (out / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == PHASES, lines
    for phase, line in zip(PHASES, lines, strict=True):
        status = line.split(": ", 1)[1]
        ok = status.startswith("ok") or (phase in SKIPS and status.startswith(SKIPS[phase]))
        log = out / f"{phase}.log"
        assert ok, (line, log.read_text()[-3000:] if log.exists() else "")
        assert status.endswith(" s)")

    suite = ET.parse(out / "cuda_tier.xml").getroot().find("testsuite").attrib
    assert int(suite["tests"]) >= 20 and suite["failures"] == suite["errors"] == "0"
    assert int(suite["skipped"]) <= 1  # the CUDA-graph case: it needs CUDA
    assert "smoke torch.compile on cpu: ok" in (out / "versions.log").read_text()

    torch_part = json.loads((out / "bench_torch.json").read_text())
    assert len(torch_part["rows"]) == 3
    for row in torch_part["rows"]:
        for column in ("pyro eager", "pyro Jit", "ours eager", "ours compiled"):
            cell = row["cells"][column]
            assert cell.get("step_s", 0) > 0 and cell["steps_run"] == 30, (row["model"], cell)
            assert not cell["fell back to eager"], cell
    table = (out / "bench_gpu.md").read_text()
    assert "| model | pyro eager | pyro Jit | ours eager | ours compiled |" in table
    assert json.loads((out / "bench_gpu.json").read_text())["rows"]
