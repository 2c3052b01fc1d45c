"""The model bundle's ``manifest.json``: its schema, its checksums and the bundle hash.

A bundle is trusted only whole. :func:`validate_manifest` checks every key of the
manifest against :data:`SCHEMA` (unknown top-level keys, missing sections and wrong
types are refused); :func:`check_bundle_files` checks that the directory holds exactly
the files the manifest names (no more, no fewer; plain names only, no links) and that
each one's SHA-256 matches; :func:`bundle_hash` is the SHA-256 over the manifest's
canonical JSON (which includes every file's hash), stored as ``bundle_hash`` and used
as the model id in reports. Editing any byte of any file, or any value in the
manifest, is detected.

This detects damage and edits, not a deliberate forgery: whoever rewrites the
manifest can recompute its hash, but then the model id changes, and every report
and baseline comparison shows it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from fpi.errors import ModelError
from fpi.files import file_sha256

#: Files a bundle directory may hold besides those the manifest lists.
MANIFEST_FILE: Final = "manifest.json"
#: A file entry: one plain name, no directory part, not hidden.
SAFE_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")

_NUM = (int, float)
_Spec = Any  # a type, a tuple of types, a dict (required keys), a 1-list (list of), None

_COUNTS: Final = {"turns": int, "sessions": int, "per_class": {str: int}}

#: The manifest's shape. Dicts list required keys (``{str: spec}`` is an open mapping);
#: ``[spec]`` a list of spec; a tuple, alternatives (``None`` allows null).
SCHEMA: Final[dict[str, _Spec]] = {
    "fpi_version": str,
    "format_version": str,
    "versions": {"fpi": str, "lightgbm": str, "polars": str, "numpy": str, "python": str},
    "classes": [str],
    "components": [str],
    "features": [{"name": str, "group": str, "kind": str, "dtype": str,
                  "levels": ([str], None)}],
    "params": {str: (int, float, str, bool, None, dict)},
    "calibration": {"method": str, "temperature": _NUM, "bias": [_NUM]},
    "training": {"fingerprint": str, "turns": int, "labelled_turns": int, "split": str,
                 "seed": int, "threads": int, "test_size": _NUM,
                 "counts": {"train": _COUNTS, "valid": _COUNTS, "calibration": _COUNTS,
                            "test": _COUNTS},
                 "class_prior": {str: _NUM}},
    "heldout": {"metrics": {str: object}, "confusion": [[int]], "soft_confusion": [[_NUM]],
                "human": (dict, None)},
    "no_context": ({"features": [str], "calibration": {"method": str, "temperature": _NUM,
                                                      "bias": [_NUM]},
                    "best_iteration": int}, None),
    "baselines": {"rules": {"thresholds": {str: object}}, "heldout": {str: object}},
    "files": {str: str},
    "bundle_hash": str,
}


def _show(name: str) -> str:
    """A name as it may appear in a one-line message (quoted if it holds odd characters)."""
    return name if re.fullmatch(r"[\w.+-]{1,100}", name) else repr(name)[:100]


def _type_name(spec: _Spec) -> str:
    if spec is None:
        return "null"
    if isinstance(spec, tuple):
        return " or ".join(_type_name(s) for s in spec)
    if isinstance(spec, list):
        return f"a list (each {_type_name(spec[0])})"
    if isinstance(spec, dict):
        return "an object"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            object: "a value"}.get(spec, getattr(spec, "__name__", str(spec)))


def _matches(value: Any, spec: _Spec) -> bool:
    """Shallow check (the type only); :func:`_check` recurses."""
    if spec is None:
        return value is None
    if isinstance(spec, tuple):
        return any(_matches(value, s) for s in spec)
    if isinstance(spec, list):
        return isinstance(value, list)
    if isinstance(spec, dict):
        return isinstance(value, dict)
    if spec is object:
        return True
    if isinstance(value, bool) and spec is not bool:
        return False
    if spec is float:
        return isinstance(value, int | float)
    return isinstance(value, spec)


def _check(value: Any, spec: _Spec, where: str) -> None:
    if isinstance(spec, tuple):
        for s in spec:
            if _matches(value, s):
                _check(value, s, where)
                return
        raise ValueError(f"{where}: expected {_type_name(spec)}, got {_kind(value)}")
    if not _matches(value, spec):
        raise ValueError(f"{where}: expected {_type_name(spec)}, got {_kind(value)}")
    if isinstance(spec, list):
        for i, item in enumerate(value):
            _check(item, spec[0], f"{where}[{i}]")
    elif isinstance(spec, dict):
        if set(spec) == {str}:
            for k, v in value.items():
                _check(v, spec[str], f"{where}.{_show(k)}")
            return
        for key, sub in spec.items():
            if key not in value:
                raise ValueError(f"{where}.{key}: missing")
            _check(value[key], sub, f"{where}.{key}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def validate_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """Check ``manifest`` against :data:`SCHEMA`; return it, or raise :class:`ModelError`.

    ``where`` names the file in the message (``MODEL/manifest.json``).
    """
    try:
        if not isinstance(manifest, dict):
            raise ValueError(f"expected a JSON object, got {_kind(manifest)}")
        extra = sorted(set(manifest) - set(SCHEMA))
        if extra:
            raise ValueError(f"unknown key(s) {', '.join(repr(k)[:100] for k in extra[:5])}")
        for key, spec in SCHEMA.items():
            if key not in manifest:
                raise ValueError(f"section {key!r} is missing")
            _check(manifest[key], spec, key)
        for name, digest in manifest["files"].items():
            check_entry_name(name)
            if not _HEX64.fullmatch(digest):
                raise ValueError(f"files.{_show(name)}: not a SHA-256 hex digest")
        if not _HEX64.fullmatch(manifest["bundle_hash"].removeprefix("sha256:")):
            raise ValueError("bundle_hash: not a sha256:HEX digest")
    except ValueError as exc:
        raise ModelError(f"{where} is damaged or edited: {exc}") from None
    return manifest


def check_entry_name(name: str) -> str:
    """Return ``name`` if it is a plain file name inside the bundle, else raise ValueError.

    Refused: empty names, any ``/`` or ``\\`` (so no ``..`` escape and no absolute
    path), hidden names, control characters, over 100 characters.
    """
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or name == MANIFEST_FILE:
        raise ValueError(f"file entry {repr(name)[:100]} is not a plain file name inside "
                         "the bundle")
    return name


def canonical(manifest: Mapping[str, Any]) -> bytes:
    """The manifest's canonical JSON bytes, without ``bundle_hash`` (what is hashed)."""
    doc = {k: v for k, v in manifest.items() if k != "bundle_hash"}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False
                      ).encode("utf-8")


def bundle_hash(manifest: Mapping[str, Any]) -> str:
    """``sha256:HEX`` over the canonical manifest (which holds every file's hash)."""
    return "sha256:" + hashlib.sha256(canonical(manifest)).hexdigest()


def check_bundle_files(path: Path, manifest: Mapping[str, Any],
                       allowed_extra: frozenset[str] = frozenset()) -> None:
    """The directory holds exactly the listed files, each a regular file with its hash.

    Raises :class:`ModelError` naming the file: missing, unexpected, a symbolic link
    or not a regular file, or edited (hash mismatch); or the manifest's own hash
    does not match its content.
    """
    if bundle_hash(manifest) != manifest["bundle_hash"]:
        raise ModelError(f"{path / MANIFEST_FILE} was edited: its content does not match its "
                         "bundle_hash; retrain the model with `fpi train`")
    listed = dict(manifest["files"])
    present = {p.name for p in path.iterdir()}
    extra = sorted(present - set(listed) - {MANIFEST_FILE} - allowed_extra)
    if extra:
        raise ModelError(f"model bundle {path}: unexpected file {_show(extra[0])} (not in "
                         f"{MANIFEST_FILE}); a bundle holds only the files it lists")
    for name, digest in listed.items():
        file = path / name
        if file.is_symlink() or (file.exists() and not file.is_file()):
            raise ModelError(f"model bundle {path}: {name} is not a regular file "
                             "(links are refused)")
        if not file.exists():
            raise ModelError(f"model bundle {path} is incomplete: {name} is missing")
        if file_sha256(file) != digest:
            raise ModelError(f"model bundle {path}: {name} was edited or damaged (its "
                             f"SHA-256 does not match {MANIFEST_FILE})")
