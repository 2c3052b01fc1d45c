"""Atomic output: write to a temporary file beside the target, then rename.

A crash or Ctrl-C never leaves a half-written output, and an existing file is
only replaced once the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fpi.errors import OutputError


def _read_umask() -> int:
    # os.umask can only be read by setting it; do it once, at import, before any
    # worker thread exists, so no file is ever created under a zero umask.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    The parent directory is created if needed. On any exception the temporary
    file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    check_writable_file(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                        dir=target.parent)
    except OSError as exc:
        raise _output_error(exc, target) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file owner-only (0600); give the output the mode a
        # plain open() would, so atomic writing does not change permissions.
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
            raise _output_error(exc, target) from None
        raise


def check_writable_file(target: Path) -> None:
    """Refuse an output path that names a directory or a special file (a device, a
    pipe): replacing it would destroy it (``--out /dev/null`` as root) or fail late."""
    if target.is_dir():
        raise OutputError(f"cannot write {target}: it is a directory; give a file name")
    if target.exists() and not target.is_file():
        raise OutputError(f"cannot write {target}: it exists and is not a regular file")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {target}: {parent} is not a directory")
            break


def _output_error(exc: OSError, target: Path) -> OutputError:
    """``cannot write TARGET: REASON`` (the temporary file's name would only confuse)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return OutputError(f"cannot write {target}: {reason}")


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)
