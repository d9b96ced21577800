"""Every stage has a `--help` that explains it."""

import pytest
from typer.testing import CliRunner

from t3s_nemo.cli import app

STAGES = ["sft", "train", "bottleneck", "profile", "mask", "rrt", "export", "import", "pipeline", "eval",
          "demo", "plan", "data pack", "data inspect", "data add-channel", "data mix", "analyze gradients",
          "analyze transfer"]


@pytest.mark.parametrize("stage", STAGES)
def test_help_explains_the_stage(stage):
    r = CliRunner().invoke(app, [*stage.split(), "--help"], terminal_width=120)
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output
    assert len(r.output.splitlines()) > 5
