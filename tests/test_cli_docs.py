"""docs/cli.md is generated from --help; it must not drift from the commands."""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_BOX = re.compile(r"[─│╭╮╰╯┌┐└┘├┤┬┴┼═║╔╗╚╝]")


def _words(text: str) -> list[str]:
    # Compare words, not layout: box drawing and wrapping may differ between
    # rich versions, the options and their help may not.
    return _BOX.sub(" ", text).split()


@pytest.fixture(scope="module")
def gen() -> Iterator[Any]:
    """scripts/gen_cli_docs.py, each command's --help rendered once for both tests."""
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts/gen_cli_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.help_text = functools.cache(module.help_text)
    yield module


def test_cli_reference_is_current(gen: Any) -> None:
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert _words(gen.render()) == _words(committed), (
        "docs/cli.md is out of date: run `python scripts/gen_cli_docs.py`"
    )


def test_every_option_is_documented(gen: Any) -> None:
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for command in gen.COMMANDS:
        options = set(re.findall(r"--[a-z][a-z0-9-]+", gen.help_text(command)))
        assert options, command
        missing = {o for o in options if o not in committed}
        assert not missing, f"fpi {command}: {sorted(missing)} not in docs/cli.md"
