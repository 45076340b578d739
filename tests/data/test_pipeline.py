"""grain pipelines: determinism, mixture proportions, sharding, exact restore."""

import collections
import itertools
import json
import math

import numpy as np
import pytest

from cosmojax.data import batching
from cosmojax.data import formatting
from cosmojax.data import pipeline
from tests import common

TASKS = ("count", "colour", "refuse")
SPEC = batching.BatchSpec.for_images(
    4, (48, 64), common.tiny_image_processor(), 1, num_patch_buckets=2)


def _sources():
  return {
      "count": common.tiny_examples("count", 37, num_images=1, seed=0),
      "colour": common.tiny_examples("colour", 50, num_images=0, seed=1),
      "refuse": common.tiny_examples("refuse", 101, num_images=1, seed=2),
  }


def _pipeline(seed=0, weights=None, mode="sft", num_threads=2, prefetch=2, **kwargs):
  formatter = formatting.ChatFormatter(common.tiny_tokenizer(), common.tiny_image_processor(),
                                       max_length=64, max_images_per_example=1)
  return pipeline.build_pipeline(
      _sources(), weights or {"count": 0.5, "colour": 0.3, "refuse": 0.2}, formatter, SPEC,
      mode=mode, seed=seed, task_names=TASKS, window_size=32, num_threads=num_threads,
      prefetch=prefetch, **kwargs)


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _assert_same_batches(got, expected):
  assert len(got) == len(expected)
  for (batch, meta), (batch_ref, meta_ref) in zip(got, expected):
    assert meta.ids == meta_ref.ids
    assert type(batch) is type(batch_ref)
    for name in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "task_ids",
                 "example_mask") + (("loss_mask",) if hasattr(batch, "loss_mask") else ()):
      np.testing.assert_array_equal(getattr(batch, name), getattr(batch_ref, name), err_msg=name)


def test_same_seed_same_batches_other_seed_other_order():
  first = _take(iter(_pipeline(seed=3)), 5)
  _assert_same_batches(_take(iter(_pipeline(seed=3, num_threads=0, prefetch=0)), 5), first)
  other = _take(iter(_pipeline(seed=4)), 5)
  assert [m.ids for _, m in other] != [m.ids for _, m in first]


def test_batches_have_static_bucketed_shapes():
  for batch, meta in _take(iter(_pipeline()), 6):
    assert batch.input_ids.shape[0] == 4 and batch.input_ids.shape[1] in SPEC.length_buckets
    assert batch.pixel_values.shape[0] in SPEC.patch_buckets
    assert batch.image_grid_thw.shape == (SPEC.max_images, 3)
    np.testing.assert_array_equal(batch.task_ids, [TASKS.index(t) for t in meta.tasks])
    # Each row's placeholders match its image's grid (1 image or none per example).
    grids = iter(batch.image_grid_thw[batch.image_grid_thw[:, 0] > 0])
    for row, example in zip(batch.input_ids, meta.examples):
      n_pads = int(np.sum(row == 5))
      assert n_pads == (int(np.prod(next(grids))) // 4 if example.images else 0)


def test_mixture_proportions_within_binomial_error():
  weights = {"count": 0.5, "colour": 0.3, "refuse": 0.2}
  n = 3000
  mixed = pipeline.mixture(_sources(), weights, seed=0, window_size=64)
  counts = collections.Counter(mixed[i].task for i in range(n))
  for task, w in weights.items():
    # Four standard deviations of a Binomial(n, w) count: a correct sampler fails this with
    # probability < 1e-4 per task.
    assert abs(counts[task] - n * w) <= 4 * math.sqrt(n * w * (1 - w)), (task, counts)


def test_each_source_is_reshuffled_every_epoch():
  mixed = pipeline.mixture(_sources(), {"colour": 1.0}, seed=0, window_size=1)
  epochs = [[mixed[i].id for i in range(50 * e, 50 * (e + 1))] for e in range(2)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(e.id for e in _sources()["colour"])
  assert epochs[0] != epochs[1]


def test_zero_weight_sources_are_left_out_and_bad_weights_named():
  mixed = pipeline.mixture(_sources(), {"count": 1.0, "colour": 0.0}, seed=0)
  assert {mixed[i].task for i in range(100)} == {"count"}
  with pytest.raises(KeyError, match=r"unknown sources \['nope'\]"):
    pipeline.mixture(_sources(), {"nope": 1.0}, seed=0)
  with pytest.raises(ValueError, match="must be >= 0"):
    pipeline.mixture(_sources(), {"count": -1.0}, seed=0)
  stages = {"general": {"count": 1.0}, "safety": {"refuse": 0.5, "count": 0.5}}
  assert pipeline.weights_for_stage(stages, "safety") == {"refuse": 0.5, "count": 0.5}
  with pytest.raises(KeyError, match=r"unknown data stage 'rl3'; known: \['general', 'safety'\]"):
    pipeline.weights_for_stage(stages, "rl3")


def test_process_shards_partition_the_global_stream():
  mixed = pipeline.mixture(_sources(), {"count": 0.5, "refuse": 0.5}, seed=0)
  shards = [pipeline.shard(mixed, i, 3) for i in range(3)]
  for k in range(30):
    assert shards[k % 3][k // 3].id == mixed[k].id
  with pytest.raises(ValueError, match="process_index 3 is outside"):
    pipeline.shard(mixed, 3, 3)
  # Whole pipelines: process 1 of 2 gets global elements 1, 3, 5, ... (no drops here).
  (_, meta1), = _take(iter(_pipeline(process_index=1, process_count=2, prefetch=0)), 1)
  assert list(meta1.ids) == _global_ids(8)[1::2]


def _global_ids(n):
  mixed = pipeline.mixture(_sources(), {"count": 0.5, "colour": 0.3, "refuse": 0.2}, seed=0,
                           window_size=32)
  return [mixed[i].id for i in range(n)]


@pytest.mark.parametrize("mode", ["sft", "prompt"])
def test_restoring_iterator_state_continues_exactly(mode):
  reference = iter(_pipeline(mode=mode))
  _take(reference, 3)
  state = json.loads(json.dumps(reference.get_state()))  # as a checkpoint would store it
  expected = _take(reference, 4)
  restored = iter(_pipeline(mode=mode))  # a fresh pipeline, as after a restart
  restored.set_state(state)
  _assert_same_batches(_take(restored, 4), expected)


def test_dropped_examples_vanish_and_are_counted():
  # Text-only prompts fit max_length; prompts with an image (>= 3 more tokens) do not.
  text_only_length = formatting.ChatFormatter(common.tiny_tokenizer(), max_length=512).prompt(
      _sources()["colour"][0]).length
  formatter = formatting.ChatFormatter(common.tiny_tokenizer(), common.tiny_image_processor(),
                                       max_length=text_only_length + 2)
  spec = batching.BatchSpec.for_images(4, (64,), common.tiny_image_processor(), 1)
  weights = {"count": 0.5, "colour": 0.5}
  ds = pipeline.build_pipeline(_sources(), weights, formatter, spec, mode="prompt", seed=0,
                               task_names=TASKS, num_threads=0, prefetch=0)
  iterator = iter(ds)
  got = _take(iterator, 3)
  assert {t for _, meta in got for t in meta.tasks} == {"colour"}
  consumed = iterator.get_state()["next_index"]
  mixed = pipeline.mixture(_sources(), weights, seed=0)
  assert formatter.drops.counts == {
      "prompt_too_long": sum(mixed[i].task == "count" for i in range(consumed))}
  assert formatter.drops.total > 0


def test_eval_batches_keep_order_and_pad_the_last_batch():
  formatter = formatting.ChatFormatter(common.tiny_tokenizer(), common.tiny_image_processor(),
                                       max_length=64)
  examples = common.tiny_examples("count", 10, num_images=1)
  batches = list(pipeline.eval_batches(examples, formatter, SPEC, task_names=TASKS, prefetch=0))
  assert len(batches) == 3
  assert [i for _, meta in batches for i in meta.ids] == [e.id for e in examples] + ["", ""]
  last, _ = batches[-1]
  np.testing.assert_array_equal(last.example_mask, [True, True, False, False])
  assert (last.attention_mask[2:] == 0).all()
  # Prompts are left-padded: every real row ends with the generation prompt.
  tok = common.tiny_tokenizer()
  for batch, meta in batches:
    for row, example in zip(batch.input_ids, meta.examples):
      if example is not None:
        assert tok.decode(row[-3:]) == "<|im_start|>assistant\n"


def test_jsonl_files_to_batches(tmp_path):
  from PIL import Image

  from cosmojax.data import image_processing
  from cosmojax.data import records

  images = [common.tiny_image(28 * (1 + i % 2), 56, seed=i) for i in range(3)]
  with open(tmp_path / "train.jsonl", "w") as f:
    for i, image in enumerate(images):
      Image.fromarray(image).save(tmp_path / f"{i}.png")
      f.write(json.dumps({"id": f"r{i}", "images": [f"{i}.png"], "messages": [
          {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe"}]},
          {"role": "assistant", "content": "red"}]}) + "\n")
  examples = records.read_jsonl(str(tmp_path / "train.jsonl"), task="count")
  formatter = formatting.ChatFormatter(common.tiny_tokenizer(), common.tiny_image_processor(),
                                       max_length=64)
  (batch, meta), = pipeline.eval_batches(examples, formatter, SPEC, task_names=TASKS)
  assert meta.ids == ("r0", "r1", "r2", "")
  expected = image_processing.ImageProcessor(min_pixels=28 * 28, max_pixels=28 * 28 * 4)(images)
  n = len(expected.pixel_values)
  np.testing.assert_array_equal(batch.pixel_values[:n], expected.pixel_values)
  np.testing.assert_array_equal(batch.image_grid_thw[:3], expected.image_grid_thw)
