"""Every stage has a `--help` that explains it."""

import pytest
from typer.testing import CliRunner

from t3s_nemo.cli import app

STAGES = ["sft", "train", "bottleneck", "profile", "mask", "rrt", "export", "import", "pipeline", "eval",
          "eval compare", "demo", "plan", "data pack", "data inspect", "data add-channel", "data mix", "analyze gradients",
          "analyze transfer"]


@pytest.mark.parametrize("stage", STAGES)
def test_help_explains_the_stage(stage):
    r = CliRunner().invoke(app, [*stage.split(), "--help"], terminal_width=120)
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output
    assert len(r.output.splitlines()) > 5


def test_help_paragraphs_flow_to_the_terminal_width():
    """A docstring's line breaks do not survive into --help (ragged half-lines), command examples do."""
    from t3s_nemo.cli import _reflow, _reflow_help

    _reflow_help(app)  # what main() does before parsing
    r = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert "in its own terse style is distilled on an R1-like teacher's traces" in r.output
    doc = "One\ntwo.\n\n- item\n  goes on\n- next\n\nt3s eval A\nt3s eval B\n"
    assert _reflow(doc) == "One two.\n\n- item goes on\n- next\n\nt3s eval A\nt3s eval B"


def test_eval_compare_has_its_own_help(monkeypatch, capsys):
    """`eval` takes a model path first, so `t3s eval compare` is routed to its own command and help."""
    import sys

    from t3s_nemo.cli import main

    monkeypatch.setattr(sys, "argv", ["t3s", "eval", "compare", "--help"])
    monkeypatch.setenv("COLUMNS", "120")
    try:
        main()
    except SystemExit as e:
        assert e.code in (0, None)
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at its own width
    assert "Usage: t3s eval compare [OPTIONS]" in out and "LABEL=PATH" in out
    assert "--benchmark" not in out  # not eval's options


def test_version_names_t3s_nemo_and_megatron_core():
    from importlib.metadata import version

    import t3s_nemo

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0
    assert r.output.startswith(f"t3s-nemo {t3s_nemo.__version__} (megatron-core {version('megatron-core')}, python ")
