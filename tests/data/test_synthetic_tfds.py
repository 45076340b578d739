"""The synthetic suite as a locally generated TFDS dataset, read without TensorFlow."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cosmojax.data import records
from cosmojax.data import synthetic
from cosmojax.data import synthetic_tfds


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  config = synthetic_tfds.SyntheticConfig(
      name="test", suite=synthetic.SuiteConfig(image_size=56), train_per_task=3,
      eval_per_task=2)
  path = str(tmp_path_factory.mktemp("tfds"))
  synthetic_tfds.prepare(path, config)
  return path, config


def test_records_read_back_as_the_generated_examples(data_dir):
  path, config = data_dir
  for split, per_task in (("train", 3), ("eval", 2)):
    source = synthetic_tfds.tfds_source(path, split, config)
    assert len(source) == per_task * len(synthetic.TASK_NAMES)
    tasks = collections.Counter()
    for i in range(len(source)):
      e = source[i]
      tasks[e.task] += 1
      ref = synthetic.make_example(e.task, split, e.metadata["index"], config.suite)
      assert e.id == ref.id and e.messages == ref.messages
      assert (e.ground_truth, e.answer_type, e.choices, e.safety, e.preferred, e.instructions,
              e.visual_key_facts, e.textual_key_facts) == (
                  ref.ground_truth, ref.answer_type, ref.choices, ref.safety, ref.preferred,
                  ref.instructions, ref.visual_key_facts, ref.textual_key_facts)
      assert len(e.images) == len(ref.images)
      assert all(np.array_equal(a, b) for a, b in zip(e.images, ref.images))
    assert set(tasks.values()) == {per_task}


def test_raw_data_source_and_bad_records(data_dir):
  path, config = data_dir
  raw = tfds.data_source(f"cosmojax_synthetic/{config.name}", data_dir=path)
  record = raw["eval"][0]
  assert set(record) == {"id", "task", "split_key", "unsafe", "category", "attack", "images",
                         "example"}
  example = synthetic_tfds.record_to_example(record, "eval[0]")
  assert example.safety.unsafe == bool(record["unsafe"])
  with pytest.raises(records.RecordError, match="eval\\[0\\].*'example'"):
    synthetic_tfds.record_to_example({**record, "example": b"{oops"}, "eval[0]")
