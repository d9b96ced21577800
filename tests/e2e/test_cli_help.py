"""Every stage has a `--help` that explains it; stages not built yet say so and write nothing."""

import sys

import pytest
from typer.testing import CliRunner

from t3s_nemo.cli import app

STAGES = ["sft", "train", "bottleneck", "profile", "mask", "rrt", "export", "import", "pipeline", "eval",
          "demo", "plan", "data pack", "data inspect", "data add-channel"]
NOT_YET = ["bottleneck", "pipeline", "eval"]


@pytest.mark.parametrize("stage", STAGES)
def test_help_explains_the_stage(stage):
    r = CliRunner().invoke(app, [*stage.split(), "--help"], terminal_width=120)
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output
    assert len(r.output.splitlines()) > 5


@pytest.mark.parametrize("stage", NOT_YET)
def test_unbuilt_stage_says_not_available(stage, tmp_path, monkeypatch, capsys):
    from t3s_nemo.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["t3s", stage, str(tmp_path / "x")])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1
    assert "is not available yet" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
