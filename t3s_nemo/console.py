"""Terminal output: one rich console (stderr) and progress bars that stay quiet in logs and tests."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# soft_wrap: long paths stay on one line in logs (Slurm, CI) instead of being cut at 80 columns
console = Console(stderr=True, highlight=False, soft_wrap=True)


def heading(title: str) -> None:
    """A stage heading: a rule across an interactive terminal; in logs, where rich assumes 80 columns and
    would cut a long title, the whole title between two short rules."""
    if console.is_terminal:
        console.rule(f"[bold]{title}")
    else:
        console.print(f"[bold]── {title} ──[/]")


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


def print_error(err: Exception) -> None:
    """One red `error:` line; the message is printed verbatim (no rich markup from paths)."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(err))}")


def exit_on_user_error(main) -> None:
    """Run an entry point; a user error (T3SError) becomes one line on stderr and exit status 1."""
    from t3s_nemo.errors import T3SError

    try:
        main()
    except T3SError as e:
        print_error(e)
        sys.exit(1)
