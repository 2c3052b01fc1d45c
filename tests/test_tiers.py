"""The quick and slow tiers (tests/tiers.py): what a bare run, ``-m slow``, ``--slow``,
a named test and ``-k`` run, in this process and under xdist."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ("pytester",)

SUITE = {
    "t/test_a.py": """
import pytest

def test_quick():
    pass

@pytest.mark.slow
def test_slow():
    pass

@pytest.mark.parametrize("n", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_param(n):
    pass
""",
}


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project with the plugin, the marker and ``testpaths``, as this repository (and
    no other plugin: loading the installed ones costs more than these runs)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makefile(".ini", pytest="[pytest]\ntestpaths = t\n"
                      "markers =\n    slow: the slow tier\n")
    pytester.makeconftest('pytest_plugins = ("tiers",)\n')
    pytester.mkdir("t")
    for name, text in SUITE.items():
        pytester.path.joinpath(name).write_text(text)
    return pytester


def _ran(recorder: pytest.HookRecorder) -> set[str]:
    return {r.nodeid.split("::")[1] for r in recorder.getreports("pytest_runtest_logreport")
            if r.when == "call"}


def test_a_bare_run_leaves_the_slow_tier_out(suite: pytest.Pytester) -> None:
    result = suite.inline_run()
    assert _ran(result) == {"test_quick", "test_param[1]"}
    assert len(result.getcalls("pytest_deselected")[0].items) == 2


@pytest.mark.parametrize(("args", "ran"), [
    (["-m", "slow"], {"test_slow", "test_param[2]"}),
    (["--slow"], {"test_quick", "test_slow", "test_param[1]", "test_param[2]"}),
    (["t/test_a.py"], {"test_quick", "test_slow", "test_param[1]", "test_param[2]"}),
    (["t/test_a.py::test_slow"], {"test_slow"}),
    (["-k", "param"], {"test_param[1]", "test_param[2]"}),
    (["-m", "not slow"], {"test_quick", "test_param[1]"}),
    (["--lf"], {"test_quick", "test_slow", "test_param[1]", "test_param[2]"}),
])
def test_asking_for_tests_keeps_the_slow_ones(suite: pytest.Pytester, args: list[str],
                                              ran: set[str]) -> None:
    assert _ran(suite.inline_run(*args)) == ran


def test_a_failed_slow_test_runs_again_with_lf(suite: pytest.Pytester) -> None:
    """``--lf`` after a run of both tiers in which a slow test failed runs that test."""
    suite.path.joinpath("t/test_b.py").write_text(
        "import pytest\n\n@pytest.mark.slow\ndef test_fails():\n    assert False\n")
    assert "test_fails" not in _ran(suite.inline_run())  # (the bare run leaves it out)
    suite.inline_run("--slow")
    assert _ran(suite.inline_run("--lf")) == {"test_fails"}


def test_the_summary_says_what_was_left_out(suite: pytest.Pytester) -> None:
    result = suite.runpytest()
    result.assert_outcomes(passed=2, deselected=2)
    result.stdout.fnmatch_lines(["quick tier: 2 slow tests left out (`-m slow` runs them*"])
    assert "left out" not in suite.runpytest("--slow").stdout.str()


@pytest.mark.slow  # three pytest processes
def test_xdist_workers_leave_out_what_the_controller_decided(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers get paths from the controller: without its decision they would keep the
    slow tier (they are separate processes: this is the README's command in small)."""
    here = str(Path(__file__).parent)  # where the plugin is
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [here, *filter(None, [os.environ.get("PYTHONPATH")])]))
    result = suite.runpytest_subprocess("-p", "xdist", "-n", "2", "--dist", "loadfile")
    result.assert_outcomes(passed=2)  # (xdist's summary has no count of deselected tests)
    result.stdout.fnmatch_lines(["quick tier: 2 slow tests left out*"])
