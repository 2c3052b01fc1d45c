"""Render the library's progress calls (:mod:`fpi.progress`) with Rich on stderr.

One line per stage: its name, a bar, done of total with the unit, the rate and
the ETA (time taken once the stage is over). Nothing at all is drawn when
stderr is not a terminal (a CI log, ``2> file``, a pipe) or under ``fpi --quiet``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fpi.progress import Progress

if TYPE_CHECKING:
    from rich.console import Console


#: Set by the global ``fpi --quiet`` option (the app callback runs on every invocation).
QUIET = False


def enabled(console: Console) -> bool:
    """Whether progress is drawn: stderr is a terminal and ``--quiet`` was not given."""
    return console.is_terminal and not QUIET


@contextlib.contextmanager
def progress_for(console: Console) -> Iterator[Progress | None]:
    """Yield a progress callable to hand to the library (``None`` when silent)."""
    if not enabled(console):
        yield None
        return
    from fpi.cli._progress_bar import StageProgress  # rich.progress only when drawing

    bar = StageProgress(console)
    bar.start()
    try:
        yield bar
    except BaseException:
        bar.stop(completed=False)  # an error or Ctrl-C: leave the stage where it stopped
        raise
    bar.stop()
