"""The pytest plugin costs nothing unless asked: pytest loads it in every project of the
environment, and without its options it imports neither this package nor torch nor Pyro;
with them, the drop-in switch is on however the plugin was loaded."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

NOTHING_HEAVY = """\
import sys

def test_nothing_heavy_was_imported():
    assert "_pyro_svi_ext_pytestplugin" in sys.modules  # the plugin was autoloaded
    heavy = sorted(m for m in ("torch", "pyro", "pyro_svi_ext") if m in sys.modules)
    assert heavy == []
"""

SWITCH_ON = """\
def test_the_switch_is_on():
    import pyro.infer

    import pyro_svi_ext

    assert pyro.infer.SVI is pyro_svi_ext.SVI
"""


def _pytest(tmp_path, source: str, *options: str) -> subprocess.CompletedProcess:
    test = tmp_path / "test_project.py"
    test.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *options, str(test)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_entry_point_is_a_top_level_module_named_as_itself():
    (entry,) = [ep for ep in importlib.metadata.entry_points(group="pytest11")
                if ep.name.startswith("_pyro_svi_ext") or "pyro_svi_ext" in ep.value]
    assert entry.name == entry.value == "_pyro_svi_ext_pytestplugin"


def test_a_project_that_never_uses_pyro_imports_neither_torch_nor_pyro(tmp_path):
    proc = _pytest(tmp_path, NOTHING_HEAVY)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_entry_module_loaded_by_name_turns_the_switch_on(tmp_path):
    proc = _pytest(tmp_path, SWITCH_ON, "-p", "_pyro_svi_ext_pytestplugin", "--pyro-svi-ext")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_former_module_name_still_loads_the_plugin_once(tmp_path):
    proc = _pytest(tmp_path, SWITCH_ON, "-p", "pyro_svi_ext.pytest_plugin", "--pyro-svi-ext")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already registered" not in proc.stdout + proc.stderr
