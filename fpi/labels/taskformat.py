"""What an annotation task shows and how the six classes are explained to annotators.

Shared by the exporters (:mod:`fpi.labels.export`) and the importer
(:mod:`fpi.labels.importer`), so the names in a Label Studio config, its tasks and
its exports agree.
"""

from __future__ import annotations

from typing import Final

from fpi.schema import CLASSES

#: The class definitions shown to annotators (docs/labels.md; the trace format spec's
#: definition of a failure point).
CLASS_DEFINITIONS: Final[dict[str, str]] = {
    "correct": "The assistant did what the user wanted. Errors a later stage recovered from "
               "are not failures (ASR dropped 'the' but the right thing happened), and a "
               "request it cannot serve by design, answered as such, is correct.",
    "false_wake": "The device woke on speech not meant for it (TV audio, side speech).",
    "asr": "Speech to text is wrong in a way that changes the meaning. If that error "
           "propagates (NLU, ER and the result fail too) the failure point is still asr: "
           "label the earliest irrecoverable failure.",
    "nlu": "The text is right (or its errors harmless) but the domain, intent or slots are "
           "wrong.",
    "er": "The intent is right but an entity is unresolved, resolved to the wrong entry, "
          "needlessly ambiguous or missing.",
    "result": "Text, intent and entities are right; the action or answer is wrong (service "
              "error, wrong content).",
}
assert tuple(CLASS_DEFINITIONS) == CLASSES

#: One line for the top of every task.
INSTRUCTION: Final = ("Label the failure point: the earliest pipeline stage that failed in a "
                      "way the pipeline did not recover from. Use the session context: the "
                      "user's next turn often shows what went wrong.")

#: Label Studio control (``<Choices name=...>``) and the object it labels (``toName``).
LS_FROM_NAME: Final = "failure_point"
LS_TO_NAME: Final = "turn"

#: Fields of a task that show the turn (exported; ignored when a filled-in task file
#: is imported back, rather than kept as extras).
VIEW_FIELDS: Final[tuple[str, ...]] = (
    "queue_rank", "stratum", "inclusion_prob", "predicted", "confidence", "turn", "device",
    "asr_text", "nbest", "nlu", "nlu_alternatives", "entities", "response", "feedback",
    "context",
)
