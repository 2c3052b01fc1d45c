"""The labels loop: which turns to annotate, labels in and out of annotation tools,
agreement between annotators, production measurement and label errors.

One module per step (docs/labels.md):

- :mod:`fpi.labels.queue`: which turns to annotate (``fpi queue``);
- :mod:`fpi.labels.export`: task files (generic JSONL/CSV, Label Studio import + config);
- :mod:`fpi.labels.importer`: labels back in (``fpi labels import``);
- :mod:`fpi.labels.resolve`: one label per turn, joined onto the traces (``--labels``);
- :mod:`fpi.labels.agreement`: annotator agreement (``fpi labels agreement``);
- :mod:`fpi.labels.measure`: the model measured on the random stratum (``fpi labels measure``);
- :mod:`fpi.labels.check`: probably-wrong training labels (``fpi labels check``).
"""
