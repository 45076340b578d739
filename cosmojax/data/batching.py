"""Collation of formatted examples into static-shape device batches.

Shapes come from a finite set of buckets (`BatchSpec`) so that jitted steps compile once per
bucket: the token length T is the smallest length bucket that holds the longest row; the
patch count P is the smallest patch bucket that holds all the batch's image patches
(concatenated in row order, zero rows after them); image grids take `max_images` rows (zero
rows after the valid ones). SFT batches are right-padded, prompt batches left-padded so that
every prompt ends at position T - 1 and generation starts at T. A short final batch (finite
passes) is filled with padding rows whose `example_mask` is False and `task_ids` -1.

M-RoPE positions come from an optional `position_fn(input_ids [B, T], attention_mask [B, T],
image_grid_thw [num_valid_images, 3]) -> (position_ids [3, B, T], rope_deltas [B] or [B, 1])`,
the model's host-side `get_rope_index`, e.g.
`lambda ids, mask, grid: get_rope_index(ids, grid, mask, model_config)`; without one,
`position_ids` is None.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Callable, Sequence

import numpy as np

from cosmojax import types
from cosmojax.data import formatting
from cosmojax.data import image_processing

PositionFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """Static batch shapes.

  Attributes:
    batch_size: rows per batch (per process).
    length_buckets: allowed token lengths T, ascending; the last is the maximum length.
    patch_buckets: allowed patch counts P per batch, ascending; (0,) for text-only data.
    max_images: image slots I per batch (rows of image_grid_thw).
  """

  batch_size: int
  length_buckets: tuple[int, ...]
  patch_buckets: tuple[int, ...] = (0,)
  max_images: int = 0

  def __post_init__(self):
    for name in ("length_buckets", "patch_buckets"):
      buckets = getattr(self, name)
      if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 0:
        raise ValueError(f"BatchSpec.{name} must be non-empty, ascending and distinct: {buckets}")
    if self.batch_size <= 0 or self.max_images < 0:
      raise ValueError(
          f"BatchSpec: bad batch_size {self.batch_size} or max_images {self.max_images}")

  @property
  def max_length(self) -> int:
    return self.length_buckets[-1]

  def length_bucket(self, length: int) -> int:
    """The smallest length bucket >= length."""
    i = bisect.bisect_left(self.length_buckets, length)
    if i == len(self.length_buckets):
      raise ValueError(f"a row of {length} tokens exceeds the largest length bucket "
                       f"{self.max_length}; set the formatter's max_length <= it.")
    return self.length_buckets[i]

  def patch_bucket(self, num_patches: int) -> int:
    """The smallest patch bucket >= num_patches."""
    i = bisect.bisect_left(self.patch_buckets, num_patches)
    if i == len(self.patch_buckets):
      raise ValueError(
          f"a batch has {num_patches} image patches, above the largest patch bucket "
          f"{self.patch_buckets[-1]}; raise patch_buckets (see patch_budget) or lower the "
          "image processor's max_pixels.")
    return self.patch_buckets[i]

  @classmethod
  def for_images(
      cls,
      batch_size: int,
      length_buckets: Sequence[int],
      image_processor: image_processing.ImageProcessor,
      max_images_per_example: int,
      num_patch_buckets: int = 1,
  ) -> "BatchSpec":
    """A spec whose largest patch bucket can never overflow (see `patch_budget`).

    The patch buckets split the budget into `num_patch_buckets` equal steps, each a multiple
    of merge_size**2 (the vision tower merges patches in groups of that size).
    """
    budget = patch_budget(batch_size, length_buckets[-1], image_processor, max_images_per_example)
    unit = image_processor.merge_size**2
    step = -(-budget // (num_patch_buckets * unit)) * unit
    buckets = tuple(sorted({min(budget, step * (i + 1)) for i in range(num_patch_buckets)}))
    return cls(batch_size, tuple(length_buckets), buckets, batch_size * max_images_per_example)


def patch_budget(
    batch_size: int,
    max_length: int,
    image_processor: image_processing.ImageProcessor,
    max_images_per_example: int,
) -> int:
  """An upper bound on the image patches of one batch.

  A row holds at most `max_images_per_example` images of at most
  max(max_pixels, factor**2) / patch_size**2 patches each (rounded down to a multiple of
  merge_size**2, as every image's patch count is), and at most merge_size**2 * max_length
  patches in all (its placeholders fit in the row). The bound is a multiple of merge_size**2.
  """
  p = image_processor
  unit = p.merge_size**2
  per_image = max(p.max_pixels, p.factor**2) // p.patch_size**2 // unit * unit
  per_row = min(max_images_per_example * per_image, p.merge_size**2 * max_length)
  return batch_size * per_row


class Collator:
  """Turns lists of `FormattedExample` into (device batch, `BatchMeta`) pairs.

  Args:
    spec: the static shapes.
    pad_id: token id of padding.
    patch_dim: row length of pixel_values (`ImageProcessor.patch_dim`).
    task_names: the task vocabulary; rows get `task_ids` indices into it.
    position_fn: optional M-RoPE position function (module docstring).
  """

  def __init__(
      self,
      spec: BatchSpec,
      *,
      pad_id: int,
      patch_dim: int,
      task_names: Sequence[str],
      position_fn: PositionFn | None = None,
  ):
    self.spec = spec
    self.pad_id = pad_id
    self.patch_dim = patch_dim
    self.task_names = tuple(task_names)
    self._task_index = {name: i for i, name in enumerate(self.task_names)}
    self.position_fn = position_fn

  @classmethod
  def for_formatter(cls, spec: BatchSpec, formatter: formatting.ChatFormatter,
                    task_names: Sequence[str], position_fn: PositionFn | None = None):
    """A collator whose pad id and patch size are the formatter's (checks its max_length)."""
    if formatter.max_length > spec.max_length:
      raise ValueError(f"formatter max_length {formatter.max_length} exceeds the largest "
                       f"length bucket {spec.max_length}.")
    unit = formatter.image_processor.merge_size**2
    if any(p % unit for p in spec.patch_buckets):
      raise ValueError(f"patch buckets {spec.patch_buckets} must be multiples of "
                       f"merge_size**2 = {unit} (the vision tower's merge unit).")
    return cls(spec, pad_id=formatter.token_ids.pad, patch_dim=formatter.image_processor.patch_dim,
               task_names=task_names, position_fn=position_fn)

  def sft(
      self, items: Sequence[formatting.FormattedExample]
  ) -> tuple[types.SFTBatch, types.BatchMeta]:
    """Right-padded SFT batch."""
    tokens, meta = self._tokens(items, left=False)
    images = self._images(items)
    position_ids = None
    if self.position_fn is not None:
      position_ids, _ = self.position_fn(tokens["input_ids"], tokens["attention_mask"],
                                         _valid_grids(images["image_grid_thw"]))
      position_ids = np.asarray(position_ids, np.int32)
    return types.SFTBatch(**tokens, **images, position_ids=position_ids), meta

  def prompts(
      self, items: Sequence[formatting.FormattedExample]
  ) -> tuple[types.PromptBatch, types.BatchMeta]:
    """Left-padded prompt batch."""
    tokens, meta = self._tokens(items, left=True)
    del tokens["loss_mask"]
    images = self._images(items)
    position_ids = rope_deltas = None
    if self.position_fn is not None:
      position_ids, rope_deltas = self.position_fn(
          tokens["input_ids"], tokens["attention_mask"], _valid_grids(images["image_grid_thw"]))
      position_ids = np.asarray(position_ids, np.int32)
      rope_deltas = np.asarray(rope_deltas, np.int32).reshape(-1)
    return types.PromptBatch(**tokens, **images, position_ids=position_ids,
                             rope_deltas=rope_deltas), meta

  def _tokens(self, items, *, left: bool) -> tuple[dict[str, np.ndarray], types.BatchMeta]:
    b = self.spec.batch_size
    if not 0 < len(items) <= b:
      raise ValueError(f"cannot collate {len(items)} examples into batches of {b}.")
    t = self.spec.length_bucket(max(item.length for item in items))
    input_ids = np.full((b, t), self.pad_id, np.int32)
    attention_mask = np.zeros((b, t), np.int32)
    loss_mask = np.zeros((b, t), np.int32)
    task_ids = np.full((b,), -1, np.int32)
    for row, item in enumerate(items):
      span = slice(t - item.length, t) if left else slice(0, item.length)
      input_ids[row, span] = item.input_ids
      attention_mask[row, span] = 1
      loss_mask[row, span] = item.loss_mask
      task_ids[row] = self._task_id(item.example)
    example_mask = np.arange(b) < len(items)
    examples = tuple(item.example for item in items) + (None,) * (b - len(items))
    tokens = dict(input_ids=input_ids, attention_mask=attention_mask, loss_mask=loss_mask,
                  task_ids=task_ids, example_mask=example_mask)
    return tokens, types.BatchMeta(examples, self.task_names)

  def _images(self, items) -> dict[str, np.ndarray]:
    grids = [item.image_grid_thw for item in items if len(item.image_grid_thw)]
    num_images = sum(len(g) for g in grids)
    if num_images > self.spec.max_images:
      raise ValueError(f"a batch has {num_images} images, above BatchSpec.max_images "
                       f"{self.spec.max_images}.")
    num_patches = sum(len(item.pixel_values) for item in items)
    pixel_values = np.zeros((self.spec.patch_bucket(num_patches), self.patch_dim), np.float32)
    image_grid_thw = np.zeros((self.spec.max_images, 3), np.int32)
    if num_images:
      pixel_values[:num_patches] = np.concatenate([item.pixel_values for item in items])
      image_grid_thw[:num_images] = np.concatenate(grids)
    return dict(pixel_values=pixel_values, image_grid_thw=image_grid_thw)

  def _task_id(self, example: types.Example) -> int:
    try:
      return self._task_index[example.task]
    except KeyError:
      raise ValueError(f"Example {example.id!r}: task {example.task!r} is not in the task "
                       f"names {self.task_names}.") from None


def _valid_grids(image_grid_thw: np.ndarray) -> np.ndarray:
  return image_grid_thw[image_grid_thw[:, 0] > 0]
