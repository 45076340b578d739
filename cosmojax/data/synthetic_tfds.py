"""The synthetic suite as a TFDS dataset, generated locally, read without TensorFlow.

    from cosmojax.data import synthetic_tfds
    builder = synthetic_tfds.prepare(data_dir, "tiny")          # generates once, no network
    source = synthetic_tfds.tfds_source(data_dir, "eval", "tiny")  # Examples, random access
    # or: tfds.data_source("cosmojax_synthetic/tiny", data_dir=data_dir)  (raw records)

Files are array_record, read with `tfds.data_source` (`tfds.load` needs TensorFlow, which is
not installed). Features: "id", "task", "split_key" (text), "unsafe" (bool), "category",
"attack" (text), "images" (a sequence of uint8 [H, W, 3] tensors, zlib-compressed) and
"example" (JSON text of every other `Example` field, in the record format of
`cosmojax.data.records`). Records come back in TFDS's shuffled order.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from cosmojax import types
from cosmojax.data import records
from cosmojax.data import synthetic

_FIELDS = ("id", "task", "messages", "ground_truth", "answer_type", "choices",
           "visual_key_facts", "textual_key_facts", "preferred", "instructions", "source",
           "metadata")


class SyntheticConfig(tfds.core.BuilderConfig):
  """Suite knobs and the number of examples of every task in each split."""

  def __init__(self, *, suite: synthetic.SuiteConfig = synthetic.SuiteConfig(),
               train_per_task: int = 512, eval_per_task: int = 128,
               tasks: tuple[str, ...] = synthetic.TASK_NAMES, **kwargs: Any):
    super().__init__(**kwargs)
    self.suite, self.tasks = suite, tuple(tasks)
    self.per_task = {"train": train_per_task, "eval": eval_per_task}


class CosmojaxSynthetic(tfds.core.GeneratorBasedBuilder):
  """The cosmojax synthetic multimodal safety suite (see `cosmojax.data.synthetic`)."""

  VERSION = tfds.core.Version("1.0.0")
  # TFDS derives this from the package with `importlib_resources`, which is not installed;
  # it only serves to look for a (non-existent) checksums file next to this module.
  code_path = epath.Path(__file__)
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      SyntheticConfig(name="default", description="512 train / 128 eval examples per task."),
      SyntheticConfig(name="tiny", train_per_task=16, eval_per_task=8,
                      description="16 train / 8 eval examples per task, for tests."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    image = tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8,
                                 encoding=tfds.features.Encoding.ZLIB)
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": text, "task": text, "split_key": text, "unsafe": np.bool_, "category": text,
            "attack": text, "images": tfds.features.Sequence(image), "example": text,
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is generated locally
    return {split: self._generate_examples(split) for split in synthetic.SPLITS}

  def _generate_examples(self, split: str):
    config = self.builder_config
    counts = {task: config.per_task[split] for task in config.tasks}
    for example in synthetic.SyntheticSource(counts, split, config.suite):
      yield example.id, to_record(example)


def to_record(example: types.Example) -> dict[str, Any]:
  """The TFDS features of a suite example."""
  fields = {name: getattr(example, name) for name in _FIELDS}
  fields["safety"] = dataclasses.asdict(example.safety)
  fields["metadata"] = dict(example.metadata)
  return {
      "id": example.id, "task": example.task,
      "split_key": example.metadata.get("split_key", ""),
      "unsafe": example.safety.unsafe, "category": example.safety.category,
      "attack": example.safety.attack,
      "images": [np.asarray(image, np.uint8) for image in example.images],
      "example": json.dumps(fields),
  }


def record_to_example(record: Mapping[str, Any], origin: str) -> types.Example:
  """Reads a record of `CosmojaxSynthetic` back into an `Example` (validated)."""
  try:
    fields = json.loads(record["example"])
  except (KeyError, json.JSONDecodeError) as e:
    raise records.RecordError(origin, "example", f"missing or invalid JSON: {e}") from None
  fields["images"] = [np.asarray(image, np.uint8) for image in record.get("images", ())]
  return records.record_to_example(fields, origin=origin, check_images=False)


def prepare(data_dir: str, config: str | SyntheticConfig = "default") -> CosmojaxSynthetic:
  """Generates the dataset under `data_dir` (once; later calls reuse it) and returns its builder."""
  builder = CosmojaxSynthetic(data_dir=data_dir, config=config, file_format="array_record")
  builder.download_and_prepare()
  return builder


def tfds_source(data_dir: str, split: str, config: str | SyntheticConfig = "default",
                on_error: str = "raise") -> records.TfdsSource:
  """A lazy random-access source of `Example`s over a prepared split (for grain)."""
  return records.TfdsSource(prepare(data_dir, config), split, to_example=record_to_example,
                            on_error=on_error)
