"""A progress bar over batches on a terminal; silent otherwise."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def progress(total: int, label: str, quiet: bool) -> Iterator[Callable[[], None]]:
    """Yields `advance()`; draws a rich bar on stderr only when it is a TTY and not quiet."""
    if quiet or total <= 0 or not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)
