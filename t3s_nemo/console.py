"""Terminal output: one rich console (stderr) and progress bars that stay quiet in logs and tests."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# soft_wrap: long paths stay on one line in logs (Slurm, CI) instead of being cut at 80 columns
console = Console(stderr=True, highlight=False, soft_wrap=True)


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
