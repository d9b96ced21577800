"""Terminal output: one rich console (stderr) and progress bars that stay quiet in logs and tests."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)


def progress(transient: bool = False) -> Progress:
    """A progress bar on interactive terminals; disabled when stderr is not a TTY (Slurm logs, CI)."""
    enabled = sys.stderr.isatty() and os.environ.get("T3S_NO_PROGRESS") != "1"
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not enabled,
    )
