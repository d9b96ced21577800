"""Stage headings in logs (not a terminal) keep their whole title: rich would cut it at 80 columns."""


def test_a_long_heading_is_whole_in_a_log(capsys):
    from t3s_nemo.console import console, heading

    assert not console.is_terminal  # pytest captures stderr, as Slurm and CI logs do
    title = "5. baseline static-confidence-low from theta_0 -> " + "/very/long/run/dir" * 6
    heading(title)
    assert title in capsys.readouterr().err
