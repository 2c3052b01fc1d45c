"""The suite's two tiers (a pytest plugin, loaded by tests/conftest.py).

A bare run, ``python -m pytest -n auto --dist loadfile`` (the README's), is the quick
tier: it leaves out the tests marked ``slow``. Those are the tests whose point is a
whole process or a big workload: the documented examples run whole, worker processes
and clusters, signals, fresh interpreters, the executable on whole workflows, statistics
over many simulated nights, and checks against scipy and scikit-learn (each a second or
more to import).
``-m slow`` runs the slow tier alone and ``--slow`` runs both; naming tests (by path,
``-k`` or ``-m``, or ``--lf``/``--ff``/``--sw``) keeps the slow ones too, so a test asked
for always runs.
``.ci/run`` runs both tiers.

Under xdist the controller decides and tells its workers (a worker is always started
with paths); each worker leaves out the same tests, and the controller says how many.
"""

from __future__ import annotations

from typing import Any

import pytest

#: The marker of the slow tier (registered in pyproject.toml).
SLOW = "slow"
#: The workers' input and output key.
_KEY = "fpi/slow-tier"
_keeps_key = pytest.StashKey[bool]()
_left_out_key = pytest.StashKey[int]()

_BARE = (pytest.Config.ArgsSource.TESTPATHS, pytest.Config.ArgsSource.INVOCATION_DIR)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the slow tier (tests marked slow), which a bare run "
                          "leaves out; `-m slow` runs it alone")


def keeps_slow(config: pytest.Config) -> bool:
    """Whether this run keeps the slow tier: ``--slow``, ``-m``, ``-k``, test paths, or
    the cache's own selections (``--lf``, ``--ff``, ``--sw``: a slow test that failed
    last time is asked for again)."""
    worker = getattr(config, "workerinput", None)
    if worker is not None and _KEY in worker:
        return bool(worker[_KEY])
    option = config.option
    return bool(config.getoption("--slow") or option.markexpr or option.keyword
                or getattr(option, "lf", False) or getattr(option, "failedfirst", False)
                or getattr(option, "stepwise", False)
                or config.args_source not in _BARE)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_keeps_key] = keeps_slow(config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """The controller's decision, for a worker."""
    node.workerinput[_KEY] = node.config.stash[_keeps_key]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the slow tier in a bare run (reported as deselected, never skipped)."""
    if config.stash[_keeps_key]:
        return
    slow = [item for item in items if item.get_closest_marker(SLOW) is not None]
    if not slow:
        return
    items[:] = [item for item in items if item.get_closest_marker(SLOW) is None]
    config.hook.pytest_deselected(items=slow)
    config.stash[_left_out_key] = len(slow)
    if hasattr(config, "workeroutput"):
        config.workeroutput[_KEY] = len(slow)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """A worker's count (every worker collects, and leaves out, the same tests)."""
    count = getattr(node, "workeroutput", {}).get(_KEY)
    if count is not None:
        node.config.stash[_left_out_key] = int(count)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    count = config.stash.get(_left_out_key, 0)
    if count and not hasattr(config, "workerinput"):
        terminalreporter.write_line(
            f"quick tier: {count} slow tests left out (`-m slow` runs them, `--slow` runs "
            "both tiers; CI runs both)")
