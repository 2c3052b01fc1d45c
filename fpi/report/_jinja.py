"""The Jinja environment of fpi's HTML reports, with its compiled templates cached.

Compiling ``report.html.j2`` costs about 0.13 CPU-s, every ``fpi diagnose``; the
compiled code is kept in fpi's cache directory (:func:`fpi.files.cache_dir`, beside
the compiled models) and read back while the template is unchanged. A cache that
cannot be read or written only costs that compile again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from jinja2.bccache import Bucket

from fpi.files import cache_dir


class _TemplateCache(jinja2.FileSystemBytecodeCache):
    """Jinja's file cache in fpi's cache directory, as it is when a template is loaded
    (the environments are built at import, before a program or test may set
    ``$FPI_CACHE_DIR``); created when first written; read and write errors are misses."""

    def __init__(self) -> None:
        super().__init__(str(cache_dir()), "jinja-%s.cache")

    def load_bytecode(self, bucket: Bucket) -> None:
        self.directory = str(cache_dir())
        try:
            super().load_bytecode(bucket)
        except (OSError, ValueError, EOFError):  # unreadable or damaged: compile again
            bucket.reset()

    def dump_bytecode(self, bucket: Bucket) -> None:
        self.directory = str(cache_dir())
        try:
            Path(self.directory).mkdir(parents=True, exist_ok=True)
            super().dump_bytecode(bucket)
        except OSError:  # a read-only or full disk: the next run compiles again
            pass


def environment(**options: Any) -> jinja2.Environment:
    """A Jinja environment of the templates in ``fpi/templates`` (``options`` as
    :class:`jinja2.Environment` takes them)."""
    return jinja2.Environment(loader=jinja2.PackageLoader("fpi", "templates"),
                              bytecode_cache=_TemplateCache(), **options)
