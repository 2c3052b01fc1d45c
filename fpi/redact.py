"""Redaction for reports that leave the team: user content masked, ids pseudonymised.

Under ``fpi diagnose --redact`` every field that comes from logs and can carry
what a user said, asked for or got back is replaced by ``[redacted]`` in every
output (``summary.json``, ``report.md``, ``report.html``, ``predictions/``,
the rejects file, the terminal and ``--json``):

- masked: ASR text and n-best alternatives, the next turn's text, slot values,
  entity mentions, resolved names and ids, ``result.action`` and
  ``result.response_text``; a rejected record's raw text and its message
  (reduced to the field path and the rule's fixed description, since messages
  quote the offending value);
- pseudonymised: ``session_id`` becomes ``anon-`` plus 16 hex digits of
  HMAC-SHA256(salt, id), so a reviewer can still tell turns and sessions apart
  and the same session keeps one name across every file of a run;
- kept: categorical fields that are not user content (device type, locale, app
  version, domain, intent, statuses, labels), numbers, file names and line numbers.

``fpi ingest --redact`` masks its rejects file the same way (:func:`redact_reject`);
its Parquet output is the logs themselves, for the team's own use.

The salt comes from ``--redact-salt`` or the ``FPI_REDACT_SALT`` environment
variable (prefer the variable, e.g. a CI secret: a command-line argument shows in
process lists and CI logs). With a salt the pseudonyms are stable across nights,
so a reviewer can follow a session from one report to the next and whoever holds
the salt and the logs can map a pseudonym back (``fpi explain --session anon-...``
with the same salt). Without one a random
salt is drawn per run and kept nowhere: pseudonyms cannot be linked across runs or
reversed by anyone. The salt itself is never written; the summary records only
whether one was given and a short ``salt_id`` (an HMAC of a fixed string) that
tells reviewers whether two reports' pseudonyms are comparable.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import polars as pl

from fpi.ingest.problems import RULES
from fpi.schema import TURN_SCHEMA

if TYPE_CHECKING:
    from fpi.ingest import Problem

#: What a masked value becomes.
REDACTED = "[redacted]"
#: Prefix of a pseudonymised id.
ID_PREFIX = "anon-"
#: Environment variable holding the salt.
SALT_ENV = "FPI_REDACT_SALT"
#: Hex digits of the HMAC kept in a pseudonym (64 bits: no collision in practice).
ID_HEX = 16

# A message's leading field path ("asr.nbest[].confidence must be ...").
_FIELD = re.compile(r"^([a-z_]+(?:\[\])?(?:\.[a-z_]+(?:\[\])?)*)\b")
_SAFE_HEADS = frozenset(TURN_SCHEMA.names()) | {"stage", "data"}


@dataclass(frozen=True)
class Redactor:
    """Masks user content and pseudonymises ids with a keyed hash (HMAC-SHA256)."""

    salt: bytes = field(repr=False)
    #: True when the salt was given (pseudonyms stable across runs).
    stable: bool = False

    def pseudonym(self, value: str) -> str:
        """``anon-`` + 16 hex digits of HMAC-SHA256(salt, value)."""
        digest = hmac.new(self.salt, value.encode("utf-8"), hashlib.sha256).hexdigest()
        return ID_PREFIX + digest[:ID_HEX]

    def id(self, value: Any) -> Any:
        """A pseudonym for ``value`` (``None`` stays ``None``)."""
        return None if value is None else self.pseudonym(str(value))

    def ids(self, series: pl.Series) -> pl.Series:
        """Pseudonymise a String column: each distinct id is hashed once."""
        uniq = series.drop_nulls().unique()
        mapping = dict(zip(uniq.to_list(), (self.pseudonym(v) for v in uniq.to_list()),
                           strict=True))
        return series.replace_strict(mapping, default=None, return_dtype=pl.String)

    @staticmethod
    def text(value: Any) -> Any:
        """``[redacted]`` for any present value (``None`` stays ``None``: absent is not content)."""
        return None if value is None else REDACTED

    def reject(self, reject: Problem) -> Problem:
        """A rejected record without its raw text, its message reduced to what is not data."""
        return redact_reject(reject)

    def describe(self) -> dict[str, Any]:
        """What the summary records about the redaction (never the salt)."""
        return {
            "ids": f"{ID_PREFIX}HMAC-SHA256(salt, id)[:{ID_HEX}]",
            "salt": "given" if self.stable else "random per run",
            "salt_id": hmac.new(self.salt, b"fpi-salt-id", hashlib.sha256).hexdigest()[:8]
            if self.stable else None,
            "masked": REDACTED,
        }


def redactor(salt: str | None = None, env: Mapping[str, str] | None = None) -> Redactor:
    """A :class:`Redactor` with ``salt``, else ``$FPI_REDACT_SALT``, else a random salt."""
    given = salt if salt else (os.environ if env is None else env).get(SALT_ENV) or None
    if given:
        return Redactor(given.encode("utf-8"), stable=True)
    return Redactor(secrets.token_bytes(32), stable=False)


def redact_reject(reject: Problem) -> Problem:
    """A rejected record without its raw text, its message reduced to what is not data
    (``fpi ingest --redact``, and under ``fpi diagnose --redact``; no salt: a reject
    keeps only its file, line, rule and the files and lines it involved)."""
    return replace(reject, raw=REDACTED, message=safe_message(reject.rule, reject.message))


def safe_message(rule: str, message: str) -> str:
    """A reject message with no log data: the field it names (if any) and the rule's text.

    Messages quote the offending value (``... got "my password"``) or the turn's
    session id; what they say about the rule is fixed text, kept from :data:`RULES`.
    """
    rule_text = RULES[rule].description if rule in RULES else rule
    m = _FIELD.match(message)
    if m and m.group(1).split(".")[0].removesuffix("[]") in _SAFE_HEADS:
        return f"{m.group(1)}: {rule_text}"
    return rule_text
