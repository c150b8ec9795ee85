"""The command line as documented: --help at every level, exit status 2 with one line
for a missing file or a bad argument, progress when the demo's output is not a
terminal, and the demo's picture where the user chose or in the per-user cache."""

from __future__ import annotations

import pytest

from pyro_svi_ext import demo
from pyro_svi_ext.cli import main


@pytest.mark.parametrize("level", [[], ["demo"], ["list"], ["run"]])
def test_help_at_every_level(level, capsys):
    with pytest.raises(SystemExit) as info:
        main([*level, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: pyro-svi-ext")


def test_compat_help_is_the_matrix_tools_help(capfd):
    assert main(["compat", "--help"]) == 0
    out = capfd.readouterr().out
    assert "migrate" in out and "suite" in out and "usage:" in out


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_run_of_a_missing_script_is_one_line_and_status_2(tmp_path, capsys):
    missing = tmp_path / "missing.py"
    assert main(["run", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "missing.py" in _one_line(err) and "Traceback" not in err


def test_a_bad_argument_is_one_line_and_status_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--steps", "0"])
    assert info.value.code == 2
    assert "--steps" in _one_line(capsys.readouterr().err)


def test_compat_migrate_of_a_missing_scenario_file_is_refused_with_status_2(tmp_path,
                                                                            capsys):
    from compat_matrix.__main__ import main as compat_main

    missing = tmp_path / "no_such_scenarios.py"
    code = compat_main(["migrate", str(missing), "--from", "1.9.2", "--to", "1.9.2:ours",
                        "--out", str(tmp_path / "report")])
    assert code == 2
    assert "no_such_scenarios.py" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "report").exists()  # refused before any cell was built


def test_the_demo_reports_progress_off_a_terminal_and_plots_to_the_user_cache(
        tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib", reason="the plots extra is not installed")
    cache, cwd = tmp_path / "cache", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("PYRO_SVI_EXT_CACHE", str(cache))
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(demo, "PROGRESS_EVERY_S", 0.0)  # every step, for the test
    assert main(["demo", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(progress) == 4 and progress[0].startswith("step 1/4, running loss")
    assert progress[-1].startswith("step 4/4, running loss")
    picture = cache / "demo-loss.png"
    assert picture.stat().st_size > 1000 and str(picture) in out
    assert list(cwd.iterdir()) == []  # nothing left in the current directory
    assert main(["demo", "--steps", "1", "--plot", str(tmp_path / "mine.png")]) == 0
    assert (tmp_path / "mine.png").stat().st_size > 1000
