"""A progress bar for the command's long replays of the log (verify, rebuild)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class Advance(Protocol):
    """Told how many events are done; the total too, where it was learnt on the way."""

    def __call__(self, done: int, total: int | None = None) -> None: ...


class _EventsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            f"{speed:,.0f} events/s" if speed else "? events/s", style="progress.data.speed"
        )


@contextmanager
def replay_progress(
    description: str, total: int | None = None, *, console: Console | None = None
) -> Iterator[Advance]:
    """Show events done / total, events per second and the time left on stderr while
    the block runs, the block calling the ``Advance`` it is given. Off a terminal
    (a log, a pipe) nothing shows but a last line, once the block is over."""
    console = console or Console(stderr=True)
    shown = console.is_terminal
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        _EventsPerSecond(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not shown,
    )
    task = progress.add_task(description, total=total)
    done_so_far, started = 0, time.monotonic()

    def advance(done: int, total: int | None = None) -> None:
        nonlocal done_so_far
        done_so_far = done
        progress.update(task, completed=done, total=total)

    with progress:
        yield advance
    if not shown:
        elapsed = time.monotonic() - started
        rate = done_so_far / elapsed if elapsed > 0 else 0.0
        known = progress.tasks[0].total
        console.print(
            f"{description}: {done_so_far}/{done_so_far if known is None else int(known)} "
            f"events in {elapsed:.1f}s ({rate:,.0f} events/s)",
            highlight=False,
            markup=False,
        )
