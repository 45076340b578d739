"""Collation into static-shape buckets."""

import numpy as np
import pytest

from cosmojax import types
from cosmojax.data import batching
from cosmojax.data import formatting
from cosmojax.data import image_processing
from tests import common

D = 6  # patch_dim of the hand-made examples


def _item(task, ids, loss=None, patches=0, grids=()):
  example = types.Example(id=f"{task}-{len(ids)}", task=task, messages=(types.user_message("x"),))
  return formatting.FormattedExample(
      example=example,
      input_ids=np.asarray(ids, np.int32),
      attention_mask=np.ones(len(ids), np.int32),
      loss_mask=np.asarray(loss if loss is not None else [0] * len(ids), np.int32),
      pixel_values=np.arange(patches * D, dtype=np.float32).reshape(patches, D) + 1,
      image_grid_thw=np.asarray(grids, np.int32).reshape(-1, 3),
  )


SPEC = batching.BatchSpec(
    batch_size=3, length_buckets=(4, 8), patch_buckets=(0, 8, 16), max_images=3)


def _collator(**kwargs):
  return batching.Collator(SPEC, pad_id=0, patch_dim=D, task_names=("a", "b"), **kwargs)


def test_sft_right_pads_into_the_smallest_length_bucket():
  items = [_item("a", [7, 8, 9], [0, 1, 1]), _item("b", [5, 6, 7, 8, 9], [0, 0, 1, 1, 1])]
  batch, meta = _collator().sft(items)
  np.testing.assert_array_equal(batch.input_ids, [[7, 8, 9, 0, 0, 0, 0, 0],
                                                  [5, 6, 7, 8, 9, 0, 0, 0],
                                                  [0] * 8])
  np.testing.assert_array_equal(batch.attention_mask, [[1, 1, 1, 0, 0, 0, 0, 0],
                                                       [1, 1, 1, 1, 1, 0, 0, 0], [0] * 8])
  np.testing.assert_array_equal(batch.loss_mask, [[0, 1, 1, 0, 0, 0, 0, 0],
                                                  [0, 0, 1, 1, 1, 0, 0, 0], [0] * 8])
  np.testing.assert_array_equal(batch.task_ids, [0, 1, -1])
  np.testing.assert_array_equal(batch.example_mask, [True, True, False])
  assert batch.pixel_values.shape == (0, D) and batch.image_grid_thw.shape == (3, 3)
  assert batch.position_ids is None
  assert meta.ids == ("a-3", "b-5", "") and meta.tasks == ("a", "b", "")
  assert meta.examples[2] is None and meta.task_names == ("a", "b")


def test_prompts_left_pad_and_images_concatenate_in_row_order():
  items = [_item("a", [7, 8], patches=4, grids=[[1, 2, 2]]),
           _item("b", [5, 6, 7], patches=5, grids=[[1, 1, 2], [1, 1, 3]]),
           _item("a", [9])]
  batch, _ = _collator().prompts(items)
  np.testing.assert_array_equal(batch.input_ids, [[0, 0, 7, 8], [0, 5, 6, 7], [0, 0, 0, 9]])
  np.testing.assert_array_equal(batch.attention_mask, [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1]])
  assert not hasattr(batch, "loss_mask")
  # 9 patches -> bucket 16; rows 0..3 from item 0, 4..8 from item 1, zeros after.
  assert batch.pixel_values.shape == (16, D)
  np.testing.assert_array_equal(batch.pixel_values[:4], items[0].pixel_values)
  np.testing.assert_array_equal(batch.pixel_values[4:9], items[1].pixel_values)
  assert not batch.pixel_values[9:].any()
  np.testing.assert_array_equal(batch.image_grid_thw, [[1, 2, 2], [1, 1, 2], [1, 1, 3]])


def test_position_fn_gets_the_valid_grids_and_fills_positions():
  calls = []

  def position_fn(input_ids, attention_mask, grids):
    calls.append(grids.copy())
    b, t = input_ids.shape
    positions = np.broadcast_to(np.cumsum(attention_mask, axis=1) - 1, (3, b, t))
    return positions, np.arange(b)

  item = _item("a", [7, 8], patches=4, grids=[[1, 2, 2]])
  batch, _ = _collator(position_fn=position_fn).prompts([item])
  np.testing.assert_array_equal(calls[0], [[1, 2, 2]])
  assert batch.position_ids.shape == (3, 3, 4) and batch.position_ids.dtype == np.int32
  np.testing.assert_array_equal(batch.position_ids[0, 0], [-1, -1, 0, 1])
  np.testing.assert_array_equal(batch.rope_deltas, [0, 1, 2])


def test_overflows_name_the_limit():
  with pytest.raises(ValueError, match="9 tokens exceeds the largest length bucket 8"):
    _collator().sft([_item("a", list(range(1, 10)))])
  with pytest.raises(ValueError, match="17 image patches, above the largest patch bucket 16"):
    _collator().sft([_item("a", [1], patches=17, grids=[[1, 1, 17]])])
  with pytest.raises(ValueError, match="task 'c' is not in the task names"):
    _collator().sft([_item("c", [1])])
  with pytest.raises(ValueError, match="must be non-empty, ascending"):
    batching.BatchSpec(2, (8, 4))


def test_patch_budget_by_hand():
  # tiny processor: max_pixels 28*28*4 -> at most 16 patches of 14 px per image.
  proc = common.tiny_image_processor()
  assert batching.patch_budget(4, 64, proc, max_images_per_example=2) == 4 * 32
  # 3 tokens of room per row can hold at most 4 * 3 = 12 patches.
  assert batching.patch_budget(4, 3, proc, max_images_per_example=2) == 4 * 12
  spec = batching.BatchSpec.for_images(4, (32, 64), proc, 2, num_patch_buckets=4)
  assert spec.patch_buckets == (32, 64, 96, 128) and spec.max_images == 8
  # max_pixels 30*30 -> 900 // 196 = 4 patches (4 of 14 px fit: 28x28); 3 buckets of 16
  # patches -> steps of ceil(16 / 3 / 4) * 4 = 8.
  proc = image_processing.ImageProcessor(min_pixels=100, max_pixels=30 * 30)
  assert batching.patch_budget(4, 64, proc, max_images_per_example=1) == 16
  spec = batching.BatchSpec.for_images(4, (64,), proc, 1, num_patch_buckets=3)
  assert spec.patch_buckets == (8, 16)


def test_patch_buckets_must_be_multiples_of_the_merge_unit():
  formatter = formatting.ChatFormatter(common.tiny_tokenizer(), max_length=8)
  spec = batching.BatchSpec(2, (8,), patch_buckets=(0, 6), max_images=2)
  message = r"patch buckets \(0, 6\) must be multiples of merge_size\*\*2 = 4"
  with pytest.raises(ValueError, match=message):
    batching.Collator.for_formatter(spec, formatter, ["a"])


def test_batches_feed_the_model_vision_tower_and_rope_index():
  """Against cosmojax.models (from the model branch; skipped until it is merged).

  The vision tower emits one embedding per placeholder token for the valid patches of a
  padded batch, and the model's get_rope_index plugs in as the collator's position_fn.
  """
  import dataclasses

  import jax.numpy as jnp

  from cosmojax import models
  if not hasattr(models, "Qwen2_5_VL"):
    pytest.skip("cosmojax.models.Qwen2_5_VL is not merged into this branch yet")
  config = models.tiny_qwen2_5_vl_config(vocab_size=256)  # patches of 4 px, merge 2
  config = dataclasses.replace(
      config, text=dataclasses.replace(config.text, mrope_section=(2, 3, 3)),
      image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4)
  proc = image_processing.ImageProcessor(min_pixels=8 * 8 * 4, max_pixels=8 * 8 * 16, patch_size=4)
  formatter = formatting.ChatFormatter(common.tiny_tokenizer(), proc, max_length=64)
  spec = batching.BatchSpec.for_images(3, (32, 64), proc, 2, num_patch_buckets=2)
  collator = batching.Collator.for_formatter(
      spec, formatter, ["count"],
      position_fn=lambda ids, mask, grid: models.get_rope_index(ids, grid, mask, config))
  examples = (common.tiny_examples("count", 2, num_images=1)
              + common.tiny_examples("count", 1, num_images=2, seed=5))
  batch, _ = collator.sft([formatter.sft(e) for e in examples])
  valid = batch.image_grid_thw[batch.image_grid_thw[:, 0] > 0]
  meta = models.vision_metadata(valid, config.vision, pad_to=batch.pixel_values.shape[0])
  model = models.Qwen2_5_VL(config)
  embeds = model.encode_images(jnp.asarray(batch.pixel_values), vision_meta=meta)
  num_placeholders = int(np.sum(batch.input_ids == 5))
  assert num_placeholders == int(np.prod(valid, axis=1).sum()) // 4
  # The padded tower output starts with exactly the unpadded one, one row per placeholder.
  unpadded = model.encode_images(jnp.asarray(batch.pixel_values[:num_placeholders * 4]), valid)
  assert unpadded.shape[0] == num_placeholders
  np.testing.assert_allclose(embeds[:num_placeholders], unpadded, atol=1e-5)
  # M-RoPE through the hook, on left-padded prompts: an image of merged grid (lh, lw) takes
  # lh*lw tokens but advances positions by max(lh, lw), so a row's rope delta (the next
  # position minus its number of real tokens) is the sum over its images of
  # max(lh, lw) - lh*lw; a text-only row has positions 0, 1, ... and delta 0.
  examples.append(common.tiny_examples("count", 1, num_images=0)[0])
  prompts, _ = collator.prompts([formatter.prompt(e) for e in examples[1:]])
  assert prompts.position_ids.shape == (3,) + prompts.input_ids.shape
  grids = iter(prompts.image_grid_thw[prompts.image_grid_thw[:, 0] > 0] // [1, 2, 2])
  for row, example in enumerate(examples[1:]):
    merged = [next(grids) for _ in example.images]
    assert prompts.rope_deltas[row] == sum(max(h, w) - h * w for _, h, w in merged)
  real = prompts.attention_mask[2] == 1
  np.testing.assert_array_equal(prompts.position_ids[:, 2, real],
                                np.broadcast_to(np.arange(real.sum()), (3, real.sum())))
