"""Readers that turn JSONL, Parquet and TFDS records into `cosmojax.types.Example`.

A record has the fields of `Example` (JSON types): id, task, messages, images, ground_truth,
answer_type, choices, safety {unsafe, category, attack}, visual_key_facts,
textual_key_facts, preferred, instructions, source, metadata. `messages` may also be a JSON
string (handy for Parquet, whose columns cannot hold "string or list" contents). `images` are
paths to local image files, relative to the data file's directory (absolute paths are kept);
they are decoded later, by the formatter. Missing `id` defaults to "<file stem>:<line>",
missing `task` to the reader's `task` argument.

Malformed records (invalid JSON, missing or unknown fields, wrong types, missing or
unreadable images) raise a `RecordError` naming the file, the line (JSONL, 1-based) or row
(Parquet, 0-based) and the field, when `on_error="raise"`; with `on_error="skip"` they are
dropped, counted in the returned `ReadReport` (with the first few reasons) and logged once.

JSONL and Parquet files are parsed eagerly (records are small; images stay on disk). TFDS
datasets are read lazily through `tfds.data_source` (array_record files; TensorFlow is not
needed), one converted record per access.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from cosmojax import types

MAX_REPORTED_ERRORS = 5
ON_ERROR_CHOICES = ("raise", "skip")

_STR_LIST_FIELDS = ("choices", "visual_key_facts", "textual_key_facts", "instructions")
_OPTIONAL_STR_FIELDS = ("ground_truth", "preferred")
_STR_FIELDS = ("answer_type", "source")
KNOWN_FIELDS = frozenset(
    ("id", "task", "messages", "images", "safety", "metadata")
    + _STR_LIST_FIELDS + _OPTIONAL_STR_FIELDS + _STR_FIELDS
)

_log = logging.getLogger(__name__)


class RecordError(ValueError):
  """A malformed record: names where it is (file and line or row) and which field."""

  def __init__(self, origin: str, field: str | None, reason: str):
    self.origin, self.field, self.reason = origin, field, reason
    where = f"{origin}: field {field!r}" if field else origin
    super().__init__(f"{where}: {reason}")


@dataclasses.dataclass
class ReadReport:
  """What a reader kept and skipped.

  Attributes:
    source: the file or dataset read.
    num_records: records turned into examples.
    num_skipped: malformed records dropped (on_error="skip").
    first_errors: the messages of the first `MAX_REPORTED_ERRORS` skipped records.
  """

  source: str
  num_records: int = 0
  num_skipped: int = 0
  first_errors: list[str] = dataclasses.field(default_factory=list)

  def add_error(self, error: RecordError) -> None:
    self.num_skipped += 1
    if len(self.first_errors) < MAX_REPORTED_ERRORS:
      self.first_errors.append(str(error))

  def summary(self) -> str:
    text = f"{self.source}: {self.num_records} records, {self.num_skipped} skipped"
    if self.first_errors:
      text += "; first errors:\n  " + "\n  ".join(self.first_errors)
    return text


class RecordSet(Sequence[types.Example]):
  """Examples read from one file (a random-access sequence for `grain.MapDataset.source`)."""

  def __init__(self, examples: Sequence[types.Example], report: ReadReport):
    self.examples = tuple(examples)
    self.report = report

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, index):
    return self.examples[index]

  def __repr__(self) -> str:
    return f"RecordSet({self.report.source!r}, {len(self)} examples)"


def read_jsonl(
    path: str,
    *,
    task: str | None = None,
    on_error: str = "raise",
    check_images: bool = True,
) -> RecordSet:
  """Reads a JSON-lines file of example records (blank lines are ignored).

  Args:
    path: the .jsonl file; image paths in it are relative to its directory.
    task: task of records without a "task" field.
    on_error: "raise" (a `RecordError` at the first bad record) or "skip" (count it).
    check_images: open each image's header now, so that missing or unreadable images are
      reported with their line instead of failing later in the pipeline.
  """
  _check_policy(on_error)

  def records() -> Iterator[tuple[str, str, Any]]:
    with open(path, encoding="utf-8") as f:
      for line_number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        origin = f"{path}:{line_number}"
        try:
          yield origin, f"{_stem(path)}:{line_number}", json.loads(line)
        except json.JSONDecodeError as e:
          yield origin, "", RecordError(origin, None, f"invalid JSON ({e.msg} at column {e.colno})")

  return _read(path, records(), task, on_error, check_images)


def read_parquet(
    path: str,
    *,
    task: str | None = None,
    on_error: str = "raise",
    check_images: bool = True,
) -> RecordSet:
  """Reads a Parquet file whose columns are example fields (rows numbered from 0).

  Arguments as for `read_jsonl`. Null values count as absent fields.
  """
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  _check_policy(on_error)
  rows = pq.read_table(path).to_pylist()

  def records() -> Iterator[tuple[str, str, Any]]:
    for row_number, row in enumerate(rows):
      row = {k: v for k, v in row.items() if v is not None}
      yield f"{path}: row {row_number}", f"{_stem(path)}:{row_number}", row

  return _read(path, records(), task, on_error, check_images)


def record_to_example(
    record: Any,
    *,
    origin: str,
    default_id: str = "",
    task: str | None = None,
    base_dir: str | None = None,
    check_images: bool = True,
) -> types.Example:
  """Validates one record (a dict of example fields) and builds the `Example`.

  Raises:
    RecordError: naming `origin` and the offending field.
  """
  if not isinstance(record, Mapping):
    raise RecordError(origin, None, f"a record must be a JSON object, got {_kind(record)}")
  unknown = sorted(set(record) - KNOWN_FIELDS)
  if unknown:
    raise RecordError(
        origin, unknown[0], f"unknown field(s) {unknown}; known: {sorted(KNOWN_FIELDS)} "
        "(put extra data under 'metadata')"
    )
  kwargs: dict[str, Any] = {
      "id": _get_str(record, "id", origin, default_id),
      "task": _get_str(record, "task", origin, task),
      "messages": _messages(record.get("messages"), origin),
  }
  if not kwargs["id"]:
    raise RecordError(origin, "id", "must be a non-empty string")
  for name in _STR_FIELDS:
    if name in record:
      kwargs[name] = _get_str(record, name, origin)
  for name in _OPTIONAL_STR_FIELDS:
    if name in record:
      kwargs[name] = _get_str(record, name, origin)
  for name in _STR_LIST_FIELDS:
    if name in record:
      kwargs[name] = _str_list(record[name], origin, name)
  if "safety" in record:
    kwargs["safety"] = _safety(record["safety"], origin)
  if "metadata" in record:
    if not isinstance(record["metadata"], Mapping):
      raise RecordError(origin, "metadata", f"expected an object, got {_kind(record['metadata'])}")
    kwargs["metadata"] = dict(record["metadata"])
  kwargs["images"] = _images(record.get("images", []), origin, base_dir, check_images)
  try:
    return types.Example(**kwargs)
  except ValueError as e:
    field = "images" if "image parts" in str(e) else "messages"
    raise RecordError(origin, field, str(e)) from None


class TfdsSource(Sequence["types.Example | None"]):
  """A TFDS split as a lazy random-access sequence of Examples (for grain).

  Records are read with `tfds.data_source` (array_record files, no TensorFlow) and converted
  by `to_example(record, origin)`; the default, `tfds_record_to_example`, expects example
  fields (bytes are decoded as UTF-8, image features are uint8 arrays). With
  on_error="skip", a bad record reads as None (the pipeline drops it) and is counted once in
  `report`; with "raise", a `RecordError` names the split and index.
  """

  def __init__(
      self,
      name_or_builder: Any,
      split: str,
      *,
      data_dir: str | None = None,
      to_example: Callable[[Mapping[str, Any], str], types.Example] | None = None,
      on_error: str = "raise",
  ):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    _check_policy(on_error)
    if isinstance(name_or_builder, str):
      self._source = tfds.data_source(name_or_builder, split=split, data_dir=data_dir)
      name = name_or_builder
    else:
      self._source = name_or_builder.as_data_source(split=split)
      name = name_or_builder.name
    self.name = f"tfds:{name}/{split}"
    self._to_example = to_example or tfds_record_to_example
    self._on_error = on_error
    self._bad: set[int] = set()
    self._lock = threading.Lock()
    self.report = ReadReport(self.name, num_records=len(self._source))

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    origin = f"{self.name}[{index}]"
    try:
      example = self._to_example(self._source[index], origin)
    except RecordError as e:
      if self._on_error == "raise":
        raise
      with self._lock:
        if index not in self._bad:
          self._bad.add(index)
          self.report.num_records -= 1
          self.report.add_error(e)
          _log.warning("skipping a malformed record: %s", e)
      return None
    return example


def tfds_record_to_example(record: Mapping[str, Any], origin: str) -> types.Example:
  """Converts a TFDS record whose features are example fields.

  Text features arrive as bytes and are decoded; `messages`/`safety`/`metadata` may be JSON
  text; `images` is a sequence of uint8 arrays (or `image`: one array).
  """
  fields = {k: _decode_bytes(v) for k, v in record.items() if k not in ("image", "images")}
  for name in ("messages", "safety", "metadata"):
    if isinstance(fields.get(name), str):
      fields[name] = _json_field(fields[name], origin, name)
  for name in _STR_LIST_FIELDS:
    if isinstance(fields.get(name), np.ndarray):
      fields[name] = [_decode_bytes(v) for v in fields[name].tolist()]
  images = record.get("images", [record["image"]] if "image" in record else [])
  fields["images"] = [np.asarray(image) for image in images]
  return record_to_example(fields, origin=origin, default_id=origin, check_images=False)


def _read(path, records, task, on_error, check_images) -> RecordSet:
  report = ReadReport(path)
  examples: list[types.Example] = []
  seen: dict[str, str] = {}
  base_dir = os.path.dirname(os.path.abspath(path))
  for origin, default_id, record in records:
    try:
      if isinstance(record, RecordError):
        raise record
      example = record_to_example(
          record, origin=origin, default_id=default_id, task=task, base_dir=base_dir,
          check_images=check_images,
      )
      if example.id in seen:
        raise RecordError(origin, "id", f"duplicate id {example.id!r} (first at {seen[example.id]})")
    except RecordError as e:
      if on_error == "raise":
        raise
      report.add_error(e)
      continue
    seen[example.id] = origin
    examples.append(example)
  report.num_records = len(examples)
  if report.num_skipped:
    _log.warning("skipped malformed records: %s", report.summary())
  return RecordSet(examples, report)


def _messages(value: Any, origin: str) -> tuple[dict[str, Any], ...]:
  if value is None:
    raise RecordError(origin, "messages", "missing")
  if isinstance(value, str):
    value = _json_field(value, origin, "messages")
  if not isinstance(value, (list, tuple)) or not value:
    raise RecordError(origin, "messages", f"expected a non-empty list, got {_kind(value)}")
  messages = []
  for i, message in enumerate(value):
    field = f"messages[{i}]"
    if not isinstance(message, Mapping):
      raise RecordError(origin, field, f"expected an object, got {_kind(message)}")
    if message.get("role") not in types.ROLES:
      raise RecordError(
          origin, f"{field}.role", f"expected one of {types.ROLES}, got {message.get('role')!r}"
      )
    content = message.get("content")
    if isinstance(content, str):
      messages.append({"role": message["role"], "content": content})
      continue
    if not isinstance(content, (list, tuple)):
      raise RecordError(
          origin, f"{field}.content", f"expected a string or a list of parts, got {_kind(content)}"
      )
    messages.append({"role": message["role"], "content": [
        _part(part, origin, f"{field}.content[{j}]") for j, part in enumerate(content)
    ]})
  return tuple(messages)


def _part(part: Any, origin: str, field: str) -> dict[str, Any]:
  if not isinstance(part, Mapping):
    raise RecordError(origin, field, f"expected an object, got {_kind(part)}")
  part = {k: v for k, v in part.items() if v is not None}
  if part.get("type") == "image":
    return {"type": "image"}
  if part.get("type") == "text":
    if not isinstance(part.get("text"), str):
      raise RecordError(origin, f"{field}.text", f"expected a string, got {_kind(part.get('text'))}")
    return {"type": "text", "text": part["text"]}
  raise RecordError(origin, f"{field}.type", f"expected 'text' or 'image', got {part.get('type')!r}")


def _images(value: Any, origin: str, base_dir: str | None, check: bool) -> tuple[Any, ...]:
  if not isinstance(value, (list, tuple)):
    raise RecordError(origin, "images", f"expected a list, got {_kind(value)}")
  images = []
  for i, image in enumerate(value):
    field = f"images[{i}]"
    if isinstance(image, np.ndarray):
      if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise RecordError(
            origin, field, f"expected a uint8 [H, W, 3] array, got {image.dtype} {image.shape}"
        )
      images.append(image)
      continue
    if not isinstance(image, str) or not image:
      raise RecordError(origin, field, f"expected an image file path, got {_kind(image)}")
    path = image if os.path.isabs(image) or base_dir is None else os.path.join(base_dir, image)
    if check:
      _check_image(path, origin, field)
    images.append(path)
  return tuple(images)


def _check_image(path: str, origin: str, field: str) -> None:
  if not os.path.isfile(path):
    raise RecordError(origin, field, f"image file {path} does not exist")
  try:
    with Image.open(path) as image:
      image.verify()
  except Exception as e:  # PIL raises many types for corrupt files.
    raise RecordError(origin, field, f"unreadable image {path}: {e}") from None


def _safety(value: Any, origin: str) -> types.SafetyLabel:
  if isinstance(value, str):
    value = _json_field(value, origin, "safety")
  if not isinstance(value, Mapping):
    raise RecordError(origin, "safety", f"expected an object, got {_kind(value)}")
  unknown = sorted(set(value) - {"unsafe", "category", "attack"})
  if unknown:
    raise RecordError(origin, f"safety.{unknown[0]}", "unknown field (known: unsafe, category, attack)")
  unsafe = value.get("unsafe", False)
  if not isinstance(unsafe, (bool, np.bool_)):
    raise RecordError(origin, "safety.unsafe", f"expected true/false, got {_kind(unsafe)}")
  return types.SafetyLabel(
      unsafe=bool(unsafe),
      category=_get_str(value, "category", origin, "", prefix="safety."),
      attack=_get_str(value, "attack", origin, "", prefix="safety."),
  )


def _get_str(record: Mapping[str, Any], name: str, origin: str, default: str | None = None,
             prefix: str = "") -> Any:
  if name not in record:
    if default is None and name in ("id", "task"):
      raise RecordError(origin, prefix + name, "missing")
    return default
  value = record[name]
  if value is None and name in _OPTIONAL_STR_FIELDS:
    return None
  if not isinstance(value, str):
    raise RecordError(origin, prefix + name, f"expected a string, got {_kind(value)}")
  return value


def _str_list(value: Any, origin: str, name: str) -> tuple[str, ...]:
  if not isinstance(value, (list, tuple)):
    raise RecordError(origin, name, f"expected a list of strings, got {_kind(value)}")
  for i, item in enumerate(value):
    if not isinstance(item, str):
      raise RecordError(origin, f"{name}[{i}]", f"expected a string, got {_kind(item)}")
  return tuple(value)


def _json_field(text: str, origin: str, name: str) -> Any:
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise RecordError(origin, name, f"invalid JSON text ({e.msg})") from None


def _decode_bytes(value: Any) -> Any:
  return value.decode("utf-8") if isinstance(value, bytes) else value


def _kind(value: Any) -> str:
  return "null" if value is None else f"{type(value).__name__} {value!r:.40}"


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def _check_policy(on_error: str) -> None:
  if on_error not in ON_ERROR_CHOICES:
    raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
