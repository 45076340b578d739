"""JSONL / Parquet / TFDS readers and their error policy."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cosmojax import types
from cosmojax.data import records
from tests import common


def _user(text="How many circles?", images=1):
  parts = [{"type": "image"}] * images + [{"type": "text", "text": text}]
  return {"role": "user", "content": parts}


GOOD = {
    "id": "ex-1",
    "task": "count",
    "messages": [_user(), {"role": "assistant", "content": "3"}],
    "images": ["img/a.png"],
    "ground_truth": "3",
    "answer_type": "number",
    "choices": ["1", "3"],
    "safety": {"unsafe": False, "category": "", "attack": ""},
    "visual_key_facts": ["three circles"],
    "instructions": ["max_words:5"],
    "metadata": {"difficulty": 2},
}


@pytest.fixture
def data_dir(tmp_path):
  os.makedirs(tmp_path / "img")
  Image.fromarray(common.tiny_image(30, 40)).save(tmp_path / "img" / "a.png")
  (tmp_path / "img" / "broken.png").write_bytes(b"not a png at all")
  return tmp_path


def _write_jsonl(path, lines):
  path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
  return str(path)


def test_reads_jsonl_with_relative_images_and_defaults(data_dir):
  no_id = {k: v for k, v in GOOD.items() if k not in ("id", "task")}
  path = _write_jsonl(data_dir / "train.jsonl", [GOOD, "", no_id])
  out = records.read_jsonl(path, task="default_task")
  assert len(out) == 2 and out.report.num_skipped == 0
  first, second = out[0], out[1]
  assert first.id == "ex-1" and first.task == "count"
  assert first.images == (str(data_dir / "img" / "a.png"),)
  assert first.safety == types.SafetyLabel() and first.choices == ("1", "3")
  assert first.instructions == ("max_words:5",) and first.metadata == {"difficulty": 2}
  assert first.target == "3" and first.prompt_text == "How many circles?"
  # Defaults: the id names the file and line (the blank line 2 still counts), the task is
  # the reader's.
  assert second.id == "train:3" and second.task == "default_task"


BAD_LINES = [
    ('{"id": "x", "task": ', None, "invalid JSON"),
    ([1, 2], None, "must be a JSON object"),
    ({"id": "x", "task": "t"}, "messages", "missing"),
    ({**GOOD, "messages": [{"role": "robot", "content": "hi"}], "images": []},
     "messages[0].role", "expected one of"),
    ({**GOOD, "messages": [{"role": "user", "content": 5}], "images": []},
     "messages[0].content", "expected a string or a list of parts"),
    ({**GOOD, "messages": [{"role": "user", "content": [{"type": "audio"}]}], "images": []},
     "messages[0].content[0].type", "expected 'text' or 'image'"),
    ({**GOOD, "images": "img/a.png"}, "images", "expected a list"),
    ({**GOOD, "images": ["img/missing.png"]}, "images[0]", "does not exist"),
    ({**GOOD, "images": ["img/broken.png"]}, "images[0]", "unreadable image"),
    ({**GOOD, "images": []}, "images", "1 image parts in messages but 0 images"),
    ({**GOOD, "ground_truth": 3}, "ground_truth", "expected a string, got int"),
    ({**GOOD, "choices": ["a", 2]}, "choices[1]", "expected a string"),
    ({**GOOD, "safety": {"unsafe": "yes"}}, "safety.unsafe", "expected true/false"),
    ({**GOOD, "answr": "3"}, "answr", "unknown field"),
    ({**GOOD, "task": ""} | {"id": ""}, "id", "non-empty"),
]


@pytest.mark.parametrize("line,field,reason", BAD_LINES)
def test_malformed_jsonl_names_file_line_and_field(data_dir, line, field, reason):
  path = _write_jsonl(data_dir / "bad.jsonl", [GOOD, line])
  with pytest.raises(records.RecordError) as info:
    records.read_jsonl(path)
  error = info.value
  assert (error.origin, error.field) == (f"{path}:2", field)
  assert reason in error.reason
  assert str(error).startswith(f"{path}:2: " + (f"field {field!r}: " if field else ""))


def test_duplicate_ids_name_both_lines(data_dir):
  path = _write_jsonl(data_dir / "dup.jsonl", [GOOD, GOOD])
  with pytest.raises(records.RecordError, match=rf"dup.jsonl:2: field 'id': duplicate id 'ex-1' \(first at .*dup.jsonl:1\)"):
    records.read_jsonl(path)


def test_skip_policy_counts_and_reports(data_dir):
  lines = [GOOD] + [line for line, _, _ in BAD_LINES] + [{**GOOD, "id": "ex-2"}]
  path = _write_jsonl(data_dir / "mixed.jsonl", lines)
  out = records.read_jsonl(path, on_error="skip")
  assert [e.id for e in out] == ["ex-1", "ex-2"]
  assert out.report.num_records == 2
  assert out.report.num_skipped == len(BAD_LINES)
  assert len(out.report.first_errors) == records.MAX_REPORTED_ERRORS
  assert out.report.first_errors[0].startswith(f"{path}:2: invalid JSON")
  assert f"{len(BAD_LINES)} skipped" in out.report.summary()


def test_unknown_policy_is_rejected(data_dir):
  with pytest.raises(ValueError, match="on_error must be one of"):
    records.read_jsonl(_write_jsonl(data_dir / "x.jsonl", [GOOD]), on_error="ignore")


def test_reads_parquet_with_json_messages(data_dir):
  rows = [
      {**GOOD, "messages": json.dumps(GOOD["messages"])},
      {**GOOD, "id": "ex-2", "messages": json.dumps([_user(images=0)]), "images": [],
       "ground_truth": None},
      {**GOOD, "id": "ex-3", "messages": json.dumps([_user(images=0)]), "images": ["img/a.png"]},
  ]
  path = str(data_dir / "train.parquet")
  pq.write_table(pa.Table.from_pylist(rows), path)
  with pytest.raises(records.RecordError, match=r"train.parquet: row 2: field 'images': Example 'ex-3': 0 image parts"):
    records.read_parquet(path)
  out = records.read_parquet(path, on_error="skip")
  assert [e.id for e in out] == ["ex-1", "ex-2"]
  assert out[0].messages == tuple(GOOD["messages"])
  assert out[0].images == (str(data_dir / "img" / "a.png"),) and out[1].ground_truth is None
  assert out.report.num_skipped == 1


def test_parquet_native_message_structs(data_dir):
  rows = [{"id": "s", "task": "t", "images": ["img/a.png"],
           "messages": [{"role": "user", "content": [{"type": "image", "text": None},
                                                     {"type": "text", "text": "Describe"}]}]}]
  path = str(data_dir / "structs.parquet")
  pq.write_table(pa.Table.from_pylist(rows), path)
  (example,) = records.read_parquet(path)
  assert example.messages == ({"role": "user", "content": [{"type": "image"},
                                                           {"type": "text", "text": "Describe"}]},)


# --- TFDS (array_record through tfds.data_source; no TensorFlow) ------------------------------


@pytest.fixture(scope="module")
def tfds_builder(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets")

  class CosmojaxTinyRecords(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "id": tfds.features.Text(),
          "task": tfds.features.Text(),
          "messages": tfds.features.Text(),  # JSON text
          "ground_truth": tfds.features.Text(),
          "image": tfds.features.Image(shape=(None, None, 3)),
      }))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(4):
        messages = [_user(images=1), {"role": "assistant", "content": str(i)}]
        if i == 2:
          messages = "[not json"
        yield i, {
            "id": f"t{i}", "task": "count", "ground_truth": str(i),
            "messages": messages if isinstance(messages, str) else json.dumps(messages),
            "image": Image.fromarray(common.tiny_image(20 + i, 30, seed=i)),
        }

  # tfds 4.9.10 looks up the source file of builders defined inside a package with
  # `importlib_resources`, which it does not install on Python >= 3.9; a builder that seems
  # to come from a top-level script takes the `inspect.getfile` path instead.
  CosmojaxTinyRecords.__module__ = "__main__"
  root = str(tmp_path_factory.mktemp("tfds"))
  builder = CosmojaxTinyRecords(data_dir=root, file_format="array_record")
  builder.download_and_prepare()
  builder.root_dir_for_test = root
  return builder


def test_tfds_source_reads_examples_lazily(tfds_builder):
  by_name = records.TfdsSource(tfds_builder.name, "train", data_dir=tfds_builder.root_dir_for_test,
                               on_error="skip")
  by_builder = records.TfdsSource(tfds_builder, "train", on_error="skip")
  for source in (by_name, by_builder):
    assert len(source) == 4
    got = {e.id: e for e in (source[i] for i in range(4)) if e is not None}
    assert sorted(got) == ["t0", "t1", "t3"]
    assert got["t3"].images[0].shape == (23, 30, 3) and got["t3"].target == "3"
    np.testing.assert_array_equal(got["t1"].images[0], common.tiny_image(21, 30, seed=1))
    assert source.report.num_skipped == 1 and source.report.num_records == 3
    assert "field 'messages': invalid JSON text" in source.report.first_errors[0]


def test_tfds_source_raises_naming_split_and_index(tfds_builder):
  source = records.TfdsSource(tfds_builder, "train")
  bad = [i for i in range(4) if _raises(source, i)]
  assert len(bad) == 1
  with pytest.raises(records.RecordError, match=rf"tfds:cosmojax_tiny_records/train\[{bad[0]}\]: field 'messages'"):
    source[bad[0]]


def _raises(source, index):
  try:
    source[index]
  except records.RecordError:
    return True
  return False
