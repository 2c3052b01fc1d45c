"""Task files: Label Studio import format and config, generic JSONL/CSV, round trips."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
import pytest

from fpi.errors import InputError, OutputError
from fpi.files import MARKER
from fpi.labels.export import FILES, read_queue, write_queue
from fpi.labels.importer import read_labels
from fpi.labels.queue import QueueOptions, build_queue
from fpi.labels.taskformat import CLASS_DEFINITIONS
from fpi.model import load_bundle
from fpi.schema import CLASSES

#: Label Studio object tags that show data (their ``value`` is ``$field``).
OBJECT_TAGS = {"Text", "HyperText", "Paragraphs", "Table"}


@pytest.fixture(scope="module")
def queue_dir(night, model_dir, tmp_path_factory):
    q = build_queue(night, QueueOptions(budget=40, seed=1), load_bundle(model_dir))
    return write_queue(q, night, tmp_path_factory.mktemp("q") / "queue")


def _config(queue_dir) -> ET.Element:
    return ET.fromstring((queue_dir / "labelstudio_config.xml").read_text(encoding="utf-8"))


def test_label_studio_config_is_well_formed_with_the_six_classes(queue_dir) -> None:
    root = _config(queue_dir)
    assert root.tag == "View"
    (choices,) = root.iter("Choices")
    assert choices.get("name") == "failure_point" and choices.get("choice") == "single"
    objects = {el.get("name") for el in root.iter() if el.tag in OBJECT_TAGS}
    assert choices.get("toName") in objects
    values = [c.get("value") for c in choices.iter("Choice")]
    assert values == list(CLASSES)
    hints = {c.get("value"): c.get("hint") for c in choices.iter("Choice")}
    assert hints == CLASS_DEFINITIONS
    assert "recovered" in hints["correct"] and "cannot serve" in hints["correct"]
    assert "earliest" in hints["asr"]
    names = [el.get("name") for el in root.iter() if el.get("name")]
    assert len(names) == len(set(names))  # Label Studio needs unique tag names


def test_label_studio_tasks_follow_the_import_format(queue_dir) -> None:
    root = _config(queue_dir)
    fields = {el.get("value", "")[1:] for el in root.iter() if el.tag in OBJECT_TAGS}
    controls = {el.get("name"): el.get("toName") for el in root.iter("Choices")}
    tasks = json.loads((queue_dir / "labelstudio_tasks.json").read_text(encoding="utf-8"))
    assert isinstance(tasks, list) and len(tasks) == 40
    for task in tasks:
        assert set(task) <= {"data", "predictions"}
        data = task["data"]
        assert fields <= set(data) and all(isinstance(data[f], str) for f in fields)
        assert {"session_id", "turn_index"} <= set(data)
        (pred,) = task["predictions"]
        assert isinstance(pred["model_version"], str) and 0 <= pred["score"] <= 1
        (res,) = pred["result"]
        assert res["type"] == "choices" and controls[res["from_name"]] == res["to_name"]
        assert res["value"]["choices"][0] in CLASSES
    assert ">> t" in tasks[0]["data"]["context"]  # the labelled turn is marked in context


def test_a_label_studio_export_of_the_tasks_imports_back(queue_dir, tmp_path) -> None:
    tasks = json.loads((queue_dir / "labelstudio_tasks.json").read_text(encoding="utf-8"))
    export = [{**t, "id": i, "annotations": [
        {"id": i, "completed_by": 3, "was_cancelled": False, "lead_time": 4.2,
         "result": [{**t["predictions"][0]["result"][0], "origin": "prediction"}]}]}
        for i, t in enumerate(tasks, start=1)]
    path = tmp_path / "project-1-at-2026.json"
    path.write_text(json.dumps(export), encoding="utf-8")
    result = read_labels([path])
    queue = read_queue(queue_dir)
    joined = result.labels.join(queue, on=["session_id", "turn_index"])
    assert joined.height == 40 and result.rejects == ()
    assert (joined["failure_point"] == joined["predicted"]).all()


def test_generic_task_files(queue_dir, night) -> None:
    lines = (queue_dir / "tasks.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(x) for x in lines]
    assert [r["queue_rank"] for r in rows] == list(range(1, 41))
    first = rows[0]
    near = night.filter((pl.col("session_id") == first["session_id"])
                        & ((pl.col("turn_index") - first["turn_index"]).abs() <= 3))
    assert len(first["context_turns"]) == near.height
    assert sum(line.startswith(">> ") for line in first["context_turns"]) == 1
    csv = pl.read_csv(queue_dir / "tasks.csv", infer_schema=False)
    assert csv.columns[:6] == ["queue_rank", "session_id", "turn_index", "annotator",
                               "failure_point", "comment"]
    # a filled-in CSV imports back; the view columns are not kept as extras
    filled = csv.with_columns(pl.lit("ann").alias("annotator"),
                              pl.col("predicted").alias("failure_point"))
    path = queue_dir.parent / "filled.csv"
    filled.write_csv(path)
    result = read_labels([path])
    assert result.labels.height == 40
    assert result.labels["extra"].null_count() == 40  # queue_rank, context... are view fields


def test_queue_directory_is_one_set_and_never_clobbers_other_dirs(queue_dir, night,
                                                                  tmp_path) -> None:
    assert sorted(p.name for p in queue_dir.iterdir()) == sorted([*FILES, MARKER])
    manifest = json.loads((queue_dir / "queue.json").read_text(encoding="utf-8"))
    assert manifest["selected"] == 40 and manifest["population"] == night.height
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep", encoding="utf-8")
    q = build_queue(night, QueueOptions(budget=5))
    with pytest.raises(InputError, match="not an fpi queue output"):
        write_queue(q, night, other)
    assert (other / "notes.txt").read_text(encoding="utf-8") == "keep"
    mine = write_queue(build_queue(night, QueueOptions(budget=7)), night, tmp_path / "q")
    write_queue(q, night, mine)  # an earlier queue is replaced whole
    assert read_queue(mine).height == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_write_leaves_the_previous_queue_whole(night, tmp_path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills up half-way through the set leaves the previous queue byte for
    byte (fpi.files.staged_output_dir), one OutputError naming the queue, no staging."""
    out = write_queue(build_queue(night, QueueOptions(budget=7)), night, tmp_path / "q")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = Path.write_bytes

    def full_disk(self: Path, data) -> int:
        if self.name == "tasks.csv":  # queue.parquet and tasks.jsonl are already staged
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OutputError, match=r"cannot write the queue to .*: No space left"):
        write_queue(build_queue(night, QueueOptions(budget=5)), night, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_config_fields_are_plain_names() -> None:
    from fpi.labels.export import label_studio_config

    assert set(re.findall(r'value="\$([a-z_]+)"', label_studio_config())) >= {"context", "turn"}
