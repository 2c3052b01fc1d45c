"""A language pack of the simulated world: the words, not the mechanics.

The simulated pipeline (who says what, how ASR corrupts it, how NLU and ER
read it) is the same in every language; what a language pack changes is the
text it works on: the catalogues (entity names, the aliases users say, the
sound-alikes ASR hears), the phrasings, the function- and content-word
confusions, the NLU keyword cues and the response phrasings. NLU and ER run on
the recognised text of that language (cue patterns and fuzzy matching), so the
signals a model sees are in that language too.
"""

from __future__ import annotations

from dataclasses import dataclass

#: (catalogue, id, display name, spoken aliases (first is the usual), mishearings)
EntityRow = tuple[str, str, str, tuple[str, ...], tuple[str, ...]]
#: Phrasings per intent name: (template with "{e}" for the slot, weight).
TemplateTable = dict[str, tuple[tuple[str, float], ...]]
#: Response phrasings by response kind (see ``fpi.simulate.engine.RESPONSES``): a tuple of
#: variants per kind, "{x}" filled with a name or the mention.
ResponseTable = tuple[tuple[str, ...], ...]

#: Response kinds an assistant can confirm tersely ("OK.") instead of naming the entity:
#: turn on/off, open, play music/video/audiobook, add to list, set a timer.
TERSE_KINDS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 7, 8)
#: Number of response kinds.
N_RESPONSE_KINDS = 23


def marked_free_ids(entities: tuple[EntityRow, ...]) -> frozenset[str]:
    """Ids of the entries in no index, which the language modules mark with ``-x``
    (``it-x1``: free text, content a service does not carry)."""
    return frozenset(row[1] for row in entities if "-x" in row[1])


@dataclass(frozen=True)
class Language:
    """The text of the world in one language.

    Attributes
    ----------
    code
        ``en``, ``de``, ``es``, ``ja``...
    locales, locale_weights, locale_accent
        Locales users of this language log, their share, and their accent mismatch
        with the acoustic model (added to the acoustic difficulty).
    entities, free_ids
        Catalogue entries (catalogue, id, display name, aliases, mishearings), and the
        ids of those in no index (free text, content a service does not carry).
    templates
        Phrasings per intent name, weighted.
    background
        What the TV or people nearby say (heard only through false wakes).
    function_edits, content_edits
        ASR confusions that keep / change the meaning: (old, new), first match applies.
    cues
        NLU keyword cues: (regex on the phrasing, intent name, weight).
    responses
        The assistant's usual response phrasing per response kind.
    confirmations
        Terse confirmations ("OK.", "Done.") for assistants that do not name the entity.
    either_or
        What joins two names in a question back ("Did you mean A or B?").
    spaced
        Whether words are separated by spaces (``ja``: no); edits and word counts
        depend on it.
    """

    code: str
    locales: tuple[str, ...]
    locale_weights: tuple[float, ...]
    locale_accent: tuple[float, ...]
    entities: tuple[EntityRow, ...]
    free_ids: frozenset[str]
    templates: TemplateTable
    background: tuple[str, ...]
    function_edits: tuple[tuple[str, str], ...]
    content_edits: tuple[tuple[str, str], ...]
    cues: tuple[tuple[str, str, float], ...]
    responses: ResponseTable
    confirmations: tuple[str, ...]
    either_or: str = " or "
    spaced: bool = True

    def __post_init__(self) -> None:
        if len(self.responses) != N_RESPONSE_KINDS:
            raise ValueError(f"{self.code}: {len(self.responses)} response kinds, "
                             f"not {N_RESPONSE_KINDS}")
        if not (len(self.locales) == len(self.locale_weights) == len(self.locale_accent)):
            raise ValueError(f"{self.code}: locales, weights and accents differ in length")

    def word_count(self, text: str) -> int:
        """Spoken length in words (about 2.5 characters a word without spaces)."""
        text = text.replace("{e}", "")
        if self.spaced:
            return len(text.split())
        return round(len(text.replace(" ", "")) / 2.5)
