"""The Rich progress display of :mod:`fpi.cli._progress`: one line per stage.

Its own module because ``rich.progress`` is imported only when progress is drawn
(stderr is a terminal), not by every ``fpi`` command.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

from fpi.progress import unit

_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def _amount(x: float, what: str) -> str:
    """``1234567`` -> ``1.2 M`` turns, bytes as ``1.2 MB``; small counts as integers."""
    if what == "bytes":
        for f, p in _SI:
            if x >= f:
                return f"{x / f:.1f} {p}B"
        return f"{x:.0f} B"
    for f, p in _SI:
        if x >= f:
            return f"{x / f:.1f}{p}"
    return f"{x:,.0f}"


class _CountColumn(ProgressColumn):
    """``412.0k of 1.0M turns`` (``412.0k turns`` while the total is unknown)."""

    def render(self, task: Task) -> Text:
        what = str(task.fields.get("unit", "items"))
        if task.fields.get("uncounted"):
            return Text("")
        done = _amount(task.completed, what)
        if task.total is None:
            return Text(f"{done} {what}" if task.completed else "")
        total = _amount(task.total, what)
        return Text(f"{done} of {total}" + ("" if what == "bytes" else f" {what}"))


class _RateColumn(ProgressColumn):
    """Units a second, e.g. ``45.0 MB/s`` or ``12.3k turns/s``."""

    def render(self, task: Task) -> Text:
        if task.finished and task.finished_time:
            speed: float | None = task.completed / task.finished_time
        else:
            speed = task.speed
        if not speed or task.fields.get("uncounted"):
            return Text("")
        what = str(task.fields.get("unit", "items"))
        suffix = "/s" if what == "bytes" else f" {what}/s"
        return Text(_amount(speed, what) + suffix, style="progress.data.speed")


class _TimeColumn(ProgressColumn):
    """``eta 0:01:10`` while running, ``took 0:00:42`` once the stage is over."""

    max_refresh = 0.5

    def render(self, task: Task) -> Text:
        def hms(s: float) -> str:
            s = int(s)
            return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"

        if task.finished:
            return Text(f"took {hms(task.finished_time or task.elapsed or 0)}",
                        style="progress.elapsed")
        if task.total is None or task.time_remaining is None:
            return Text(f"{hms(task.elapsed or 0)}", style="progress.elapsed")
        return Text(f"eta {hms(task.time_remaining)}", style="progress.remaining")


class StageProgress:
    """A :class:`fpi.progress.Progress` callable drawing one Rich line per stage."""

    def __init__(self, console: Console) -> None:
        self._bar = RichProgress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=30), _CountColumn(),
            _RateColumn(), _TimeColumn(), console=console, transient=False,
            redirect_stdout=False, redirect_stderr=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._current: str | None = None

    def __call__(self, stage: str, done: int, total: int | None, /) -> None:
        if stage != self._current:
            self._finish_current()
            if stage not in self._tasks:
                self._tasks[stage] = self._bar.add_task(stage, total=total, unit=unit(stage))
            self._current = stage
        self._bar.update(self._tasks[stage], completed=done, total=total)

    def _finish_current(self) -> None:
        if self._current is None:
            return
        task = self._tasks[self._current]
        t = next(t for t in self._bar.tasks if t.id == task)
        # a stage that ends early (early stopping, a bound) is done: show it so
        self._bar.update(task, total=t.completed or 1, completed=t.completed or 1,
                         uncounted=not t.completed)
        self._bar.stop_task(task)

    def start(self) -> None:
        self._bar.start()

    def stop(self, *, completed: bool = True) -> None:
        """Stop drawing; the running stage is shown done only if the work ``completed``."""
        if completed:
            self._finish_current()
        self._bar.stop()
