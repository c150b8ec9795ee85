"""The README's commands and examples are true: its Python blocks run as written."""

import math
import re
from pathlib import Path

import pyro

import pyro_svi_ext
from pyro_svi_ext import registry

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_the_demo_and_test_commands():
    assert README.index("```bash") < 40
    demo, tests = readme_commands()
    assert "-m pyro_svi_ext demo" in demo and "pip install" in demo
    assert tests.endswith("-m pytest") and "'.[test]'" in tests


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 4
    namespace: dict = {"__name__": "readme"}
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)
    finally:
        registry.reload()
        pyro_svi_ext.uninstall()
    assert namespace["elbo"].beta == 1.0
    assert len(namespace["losses"]) == 3 and all(map(math.isfinite, namespace["losses"]))
    assert pyro.param("loc").item() != 0.0  # the compiled steps moved the param
