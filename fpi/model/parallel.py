"""Several model fits at once, in threads, each the same as when fitted alone.

LightGBM releases the GIL while it boosts, so on a machine with spare cores the
fold models of a cross-fit, and the no-context model beside the main one, can
train at the same time. Each fit keeps its own ``num_threads`` and its own seed,
so every model is the same, byte for byte, whether the fits ran one by one or
together: how many run at once is not part of the reproducibility key (data,
seed, threads).

:class:`Fits` caps how many fits run at once (``fpi train --jobs`` divided by
``--threads``), so the cores are used and not oversubscribed. A fit that fails,
or a Ctrl-C, stops the others at their next boosting round.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from functools import partial
from typing import Any, TypeVar

from fpi.engine import available_cores

_T = TypeVar("_T")
#: Seconds between the checks of a thread waiting for fits (see :meth:`Fits._watch`).
_WAKE_S = 0.25


class FitsStopped(Exception):
    """Raised inside a fit when another fit failed or the run was interrupted."""


def fits_at_once(jobs: int | None, threads: int) -> int:
    """How many fits of ``threads`` threads each run at once on ``jobs`` cores
    (``None``: every available core); at least one."""
    cores = available_cores() if jobs is None else jobs
    return max(1, cores // max(1, threads))


class Fits:
    """Runs model fits, at most ``at_once`` at the same time.

    :meth:`fit` runs one fit when a slot is free; :meth:`map` runs several
    (concurrently when ``at_once`` > 1), :meth:`together` runs whole pipelines of
    fits side by side. Results always come back in the order given.
    """

    def __init__(self, at_once: int = 1) -> None:
        self.at_once = max(1, at_once)
        self._slots = threading.BoundedSemaphore(self.at_once)
        self._stop = threading.Event()

    def fit(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` (one model fit), once a slot is free."""
        with self._slots:
            if self._stop.is_set():
                raise FitsStopped("another fit failed or the run was interrupted")
            return fn()

    def map(self, fns: Sequence[Callable[[], _T]],
            done: Callable[[int], None] | None = None) -> list[_T]:
        """:meth:`fit` of every ``fn``, results in order; ``done(n)`` after each of them
        finishes (in this thread, with ``n`` finished so far)."""
        if self.at_once == 1 or len(fns) <= 1:
            out: list[_T] = []
            for fn in fns:
                out.append(self.fit(fn))
                if done is not None:
                    done(len(out))
            return out
        return self.together([partial(self.fit, fn) for fn in fns], done)

    def together(self, fns: Sequence[Callable[[], _T]],
                 done: Callable[[int], None] | None = None) -> list[_T]:
        """Every ``fn`` in its own thread (each takes slots for its own fits); results
        in order. If one raises, or this thread is interrupted, the others are stopped
        at their next round and the first error (in order) is raised."""
        with ThreadPoolExecutor(max_workers=max(1, len(fns)),
                                thread_name_prefix="fpi-fit") as pool:
            futures = [pool.submit(fn) for fn in fns]
            try:
                self._watch(futures, done)
            except BaseException:
                self._stop.set()  # the pool waits for the running fits, which stop soon
                raise
        errors = [e for e in (f.exception() for f in futures) if e is not None]
        if errors:  # a fit's own error, not the stop it caused in another
            raise next((e for e in errors if not isinstance(e, FitsStopped)), errors[0])
        return [f.result() for f in futures]

    def _watch(self, futures: list[Future[Any]], done: Callable[[int], None] | None) -> None:
        """Wait for ``futures``, stopping the fits when one fails. The wait wakes up
        often: a Ctrl-C may reach a worker thread, and only this (main) thread can raise
        it, when it runs."""
        pending, finished = set(futures), 0
        while pending:
            ended, pending = wait(pending, timeout=_WAKE_S, return_when=FIRST_COMPLETED)
            for future in ended:
                finished += 1
                if future.exception() is not None:
                    self._stop.set()
                elif done is not None:
                    done(finished)

    def callback(self) -> Callable[[Any], None]:
        """A LightGBM callback that ends a fit at its next round once the fits are stopped."""
        def check(env: Any) -> None:
            if self._stop.is_set():
                raise FitsStopped("another fit failed or the run was interrupted")

        return check


__all__ = ["Fits", "FitsStopped", "fits_at_once"]
