"""Safe output: single files written atomically, and whole output *sets* swapped in at once.

Two mechanisms, both built on ``rename`` within one file system:

- :func:`atomic_path` / :func:`write_text_atomic`: one file, written beside its
  target and renamed over it.
- :func:`staged_output_dir` (a directory of outputs: ``fpi diagnose --out``,
  ``fpi train --out``) and :func:`staged_files` (a few loose files: ``fpi ingest``'s
  Parquet and its rejects): everything is built in a *staging directory* beside the
  target and swapped in at the end, so a reader sees either the previous set or the
  new one, never a mix.

Staging and set-aside names carry the host and process id of their run::

    .NAME.fpi-staging.HOST.PID.TOKEN    being built (removed on any failure)
    .NAME.fpi-old.HOST.PID.TOKEN        the previous set, moved aside during a swap

A run killed with SIGKILL cannot clean up; the next run on the same target does it
(:func:`recover`): staging of a dead process is removed, a set-aside previous set is
put back if the swap never finished (or removed if it did), and a file set whose
commit journal was written is rolled forward. Entries of a live process are left
alone (unless older than :data:`STALE_SECONDS`, or from another host and that old).
Swaps and recovery hold an exclusive ``flock`` on the parent directory, so two runs
on one target never interleave their renames.

An output directory must be absent, empty, or a previous fpi output of the same
kind: the marker file :data:`MARKER` (``{"kind": ..., "fpi_version": ...}``) says
so. Anything else (a user's folder, ``.``, a regular file) is refused with
:class:`~fpi.errors.InputError`; fpi never deletes a file it did not write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from fpi import __version__
from fpi.errors import InputError, OutputError

log = logging.getLogger(__name__)

#: Marker file naming an fpi output directory's kind and the fpi that wrote it.
MARKER: Final = ".fpi-output.json"
#: Journal of a committed file set (inside its staging directory).
JOURNAL: Final = ".commit.json"
#: Staging of a process that still runs is only removed when older than this (a
#: reused pid, or another host sharing the file system).
STALE_SECONDS: Final = 7 * 24 * 3600

_HOST: Final = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_ENTRY = re.compile(r"(?P<state>staging|old)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)"
                    r"\.(?P<token>[0-9a-f]{8})")


def _read_umask() -> int:
    # os.umask can only be read by setting it; do it once, at import, before any
    # worker thread exists, so no file is ever created under a zero umask.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


# ---------------------------------------------------------------------------
# Single files
# ---------------------------------------------------------------------------

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


@contextlib.contextmanager
def _preparing(target: Path) -> Iterator[None]:
    """OS errors while making room for ``target`` (parents, staging) name the target."""
    try:
        yield
    except OSError as exc:
        raise _output_error(exc, target) from None


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


# ---------------------------------------------------------------------------
# Locks, signals, names
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``directory`` (no lock file left behind)."""
    try:
        import fcntl

        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (ImportError, OSError):  # pragma: no cover - no flock here: go on unlocked
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back during a few renames that belong together."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while an output set was being built (handled like Ctrl-C)."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into an exception, so staging is cleaned up as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _entry_name(target: Path, state: str) -> Path:
    return target.parent / (f".{target.name}.fpi-{state}.{_HOST}.{os.getpid()}."
                            f"{secrets.token_hex(4)}")


def _owner_gone(host: str, pid: int, path: Path) -> bool:
    """Whether the run that made ``path`` can no longer be running."""
    try:
        age = time.time() - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_SECONDS:
        return True
    if host != _HOST or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, someone else's
        return False
    return False


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------
# Recovery
# ---------------------------------------------------------------------------

def _roll_forward(staging: Path) -> None:
    """Finish a committed file set: move every staged file still there onto its target."""
    try:
        plan = json.loads((staging / JOURNAL).read_text(encoding="utf-8"))["renames"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for staged, target in plan:
        src = staging / str(staged)
        if src.exists():
            os.replace(src, str(target))


def _recover_locked(target: Path) -> list[str]:
    actions: list[str] = []
    prefix = f".{target.name}.fpi-"
    try:
        entries = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return actions
    for entry in sorted(entries):
        m = _ENTRY.fullmatch(entry.name[len(prefix):])
        if m is None or not _owner_gone(m["host"], int(m["pid"]), entry):
            continue
        if m["state"] == "old" and not os.path.lexists(target):
            os.rename(entry, target)  # the swap never finished: put the previous set back
            actions.append(f"restored {target} from an interrupted run")
        elif m["state"] == "staging" and (entry / JOURNAL).is_file():
            _roll_forward(entry)  # committed before the crash: finish it
            _rmtree(entry)
            actions.append(f"finished the interrupted commit of {target}")
        else:
            _rmtree(entry)
            actions.append(f"removed {entry.name} left by an interrupted run")
    for a in actions:
        log.warning("%s", a)
    return actions


def recover(target: str | os.PathLike[str]) -> list[str]:
    """Clean up after runs on ``target`` that were killed; return what was done.

    Removes staging of dead processes, restores a previous set that a killed swap
    left aside (or removes it if the new set is in place), and rolls a committed
    file set forward. Entries of live processes are not touched.
    """
    target = Path(os.path.abspath(target))
    if not target.parent.is_dir():
        return []
    with _locked(target.parent):
        return _recover_locked(target)


# ---------------------------------------------------------------------------
# Output directories
# ---------------------------------------------------------------------------

def read_marker(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of an fpi output directory, or None if it has none (or a broken one)."""
    try:
        doc = json.loads((Path(directory) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("kind"), str) else None


def check_output_dir(target: str | os.PathLike[str], kind: str,
                     legacy: Callable[[Path], bool] | None = None) -> Path:
    """Return ``target`` as an absolute path if fpi may replace it with a ``kind`` output.

    Accepted: absent, an empty directory, or a directory whose :data:`MARKER` names
    ``kind`` (or, for outputs of older fpi versions, one ``legacy`` accepts).

    Raises
    ------
    InputError
        ``target`` is a file, a symbolic link, the current directory (or holds it),
        another kind of fpi output, or a non-empty directory fpi did not write.
    """
    given = os.fspath(target)
    path = Path(os.path.abspath(target))
    if path.is_symlink():
        raise InputError(f"--out {given}: is a symbolic link; give a real directory path")
    if not path.exists():
        return path
    if not path.is_dir():
        raise InputError(f"--out {given}: exists and is not a directory; choose a new "
                         "directory for the outputs")
    cwd = Path.cwd().resolve()
    if path.resolve() == cwd or path.resolve() in cwd.parents:
        raise InputError(f"--out {given}: is the current directory (or contains it); "
                         "give a new or empty subdirectory, e.g. --out fpi-out")
    marker = read_marker(path)
    if marker is not None:
        if marker["kind"] != kind:
            raise InputError(f"--out {given}: holds an fpi {marker['kind']} output, not a "
                             f"{kind} output; choose another directory")
        return path
    if not any(path.iterdir()) or (legacy is not None and legacy(path)):
        return path
    raise InputError(f"--out {given}: is not empty and is not an fpi {kind} output (no "
                     f"{MARKER}); refusing to replace it: choose a new or empty directory")


def _swap_in(staging: Path, target: Path, kind: str,
             legacy: Callable[[Path], bool] | None) -> None:
    """Rename ``staging`` onto ``target``; the previous set is set aside, then removed."""
    with _locked(target.parent), _signals_blocked():
        _recover_locked(target)
        check_output_dir(target, kind, legacy)  # again: it may have changed meanwhile
        old: Path | None = None
        if os.path.lexists(target):
            old = _entry_name(target, "old")
            os.rename(target, old)
        try:
            os.rename(staging, target)
        except BaseException:
            if old is not None:
                os.rename(old, target)
            raise
        _fsync_dir(target.parent)
        if old is not None:
            _rmtree(old)  # if this fails, the next run removes it (the new set is in place)


@contextlib.contextmanager
def staged_output_dir(target: str | os.PathLike[str], kind: str, *,
                      legacy: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Build a whole output directory in staging and swap it onto ``target`` at the end.

    Usage::

        with staged_output_dir(out, "diagnose") as stage:
            (stage / "summary.json").write_text(...)
        # now out/ holds exactly what was written into stage/, plus the marker

    ``target`` is checked first (:func:`check_output_dir`) and the leftovers of killed
    runs are recovered (:func:`recover`). The staging directory sits beside
    ``target`` (same file system), named after this process. On success the marker
    is added and the directory swapped in; on any exception, Ctrl-C or SIGTERM the
    staging directory is removed and ``target`` is exactly as it was.
    """
    recover(target)  # first: a killed swap may have left the previous set aside
    path = check_output_dir(target, kind, legacy)
    staging = _entry_name(path, "staging")
    with _preparing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    with _sigterm_interrupts():
        with _preparing(path):
            staging.mkdir()
        try:
            yield staging
            (staging / MARKER).write_text(
                json.dumps({"kind": kind, "fpi_version": __version__}, sort_keys=True) + "\n",
                encoding="utf-8")
            _swap_in(staging, path, kind, legacy)
        except BaseException:
            _rmtree(staging)
            raise


# ---------------------------------------------------------------------------
# Loose file sets
# ---------------------------------------------------------------------------

def _commit_files(plan: dict[Path, list[tuple[str, Path]]]) -> None:
    """Journal every staging directory, then rename the files into place."""
    with contextlib.ExitStack() as stack:
        for staging in plan:
            stack.enter_context(_locked(staging.parent))
        stack.enter_context(_signals_blocked())
        for staging, moves in plan.items():
            journal = [[name, str(t)] for name, t in moves if (staging / name).exists()]
            write_text_atomic(staging / JOURNAL, json.dumps({"renames": journal}) + "\n")
        for staging in plan:
            _roll_forward(staging)
        for staging in plan:
            _fsync_dir(staging.parent)
            _rmtree(staging)


@contextlib.contextmanager
def staged_files(targets: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Stage a set of loose files and rename them all onto ``targets`` at the end.

    Yields one path per target, inside a staging directory beside it (one per parent
    directory). A staged file left unwritten leaves its target alone. On success a
    commit journal is written into every staging directory *before* the first
    rename, so a run killed half-way is finished by the next run on those targets
    (:func:`recover`); on any exception nothing is renamed and staging is removed.
    """
    paths = [Path(os.path.abspath(t)) for t in targets]
    for p in paths:
        with _preparing(p):
            p.parent.mkdir(parents=True, exist_ok=True)
        recover(p)
    stagings: dict[Path, Path] = {}
    plan: dict[Path, list[tuple[str, Path]]] = {}
    staged: list[Path] = []
    with _sigterm_interrupts():
        try:
            for p in paths:
                home = stagings.get(p.parent)
                if home is None:
                    home = _entry_name(p, "staging")
                    with _preparing(p):
                        home.mkdir()
                    stagings[p.parent] = home
                    plan[home] = []
                name = f"{len(staged)}-{p.name}"
                plan[home].append((name, p))
                staged.append(home / name)
            yield staged
            _commit_files(plan)
        except BaseException:
            for home in stagings.values():
                _rmtree(home)
            raise


def unique_paths(paths: Sequence[Path]) -> list[Path]:
    """``paths`` in order, each file once (two names of one file count as one)."""
    seen: set[Path] = set()
    unique = []
    for p in paths:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def file_sha256(path: Path, on_block: Callable[[int], None] | None = None) -> str:
    """Hex SHA-256 of a file, streamed in 1 MiB blocks (constant memory; hashlib
    releases the GIL on blocks this big); ``on_block(n_bytes)`` follows each block."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            if on_block is not None:
                on_block(len(block))
    return digest.hexdigest()


#: The environment variable that names fpi's cache directory (:func:`cache_dir`).
CACHE_ENV: Final = "FPI_CACHE_DIR"


def cache_dir() -> Path:
    """fpi's cache (compiled models, compiled report templates): ``$FPI_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/fpi``, else ``~/.cache/fpi``; read at each call."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fpi"
