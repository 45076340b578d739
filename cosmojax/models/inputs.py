"""Host-side preparation of a collated batch for a jitted forward pass.

Under `jax.jit` the model cannot look at concrete token ids or image grids, so everything
derived from them (M-RoPE position ids, the vision tower's window/segment indices) is computed
here, on the host, once per batch. The result is a pytree of arrays whose shapes depend only
on the batch's static buckets, so a jitted step compiles once per bucket.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cosmojax.models.configs import Qwen2_5_VLConfig, TextConfig
from cosmojax.models.rope_index import get_rope_index
from cosmojax.models.vision import VisionMeta, vision_metadata
from cosmojax.parallel import axes
from cosmojax.parallel.sharding import batch_spec

# Batch rows split over both data-parallel mesh axes.
DATA_AXES = (axes.DATA, axes.FSDP)


@flax.struct.dataclass
class ModelInputs:
  """Everything a jitted forward of a causal LM needs.

  Attributes:
    input_ids: [B, T] int32.
    attention_mask: [B, T] int32, 1 on real tokens.
    position_ids: [3, B, T] int32 M-RoPE positions (Qwen2.5-VL) or [B, T] (text models).
    pixel_values: [P, patch_dim] image patches padded to a bucket, or None without images.
    vision_meta: the vision tower's index metadata for `pixel_values`, or None.
  """

  input_ids: Any
  attention_mask: Any
  position_ids: Any
  pixel_values: Any = None
  vision_meta: VisionMeta | None = None

  @property
  def has_images(self) -> bool:
    return self.pixel_values is not None


def text_positions(attention_mask: np.ndarray) -> np.ndarray:
  """0, 1, ... over each row's real tokens; padding gets 0.  # [B, T] int32"""
  mask = np.asarray(attention_mask).astype(np.int32)
  return np.where(mask > 0, np.cumsum(mask, axis=-1) - 1, 0).astype(np.int32)


def valid_grids(image_grid_thw: Any) -> np.ndarray:
  """The real rows of a padded [I, 3] grid (padding rows are all zero)."""
  grid = np.asarray(image_grid_thw).reshape(-1, 3)
  return grid[grid[:, 0] > 0]


def prepare_inputs(batch: Any, config: Qwen2_5_VLConfig | TextConfig) -> ModelInputs:
  """`ModelInputs` of a collated `SFTBatch`/`PromptBatch` (or anything with the same fields).

  Position ids the pipeline already computed (its `position_fn`) are kept; otherwise they are
  computed here with `get_rope_index` (Qwen2.5-VL) or counted over real tokens (text models).
  """
  input_ids = np.asarray(batch.input_ids, np.int32)
  mask = np.asarray(batch.attention_mask, np.int32)
  given = getattr(batch, "position_ids", None)
  if not isinstance(config, Qwen2_5_VLConfig):
    positions = text_positions(mask) if given is None else np.asarray(given)
    return ModelInputs(input_ids, mask, positions)
  grids = valid_grids(getattr(batch, "image_grid_thw", np.zeros((0, 3))))
  if given is not None:
    positions = np.asarray(given, np.int32)
  else:
    positions = get_rope_index(input_ids, grids, mask, config)[0]
  if len(grids) == 0:
    return ModelInputs(input_ids, mask, positions)
  pixels = np.asarray(batch.pixel_values, np.float32)
  meta = vision_metadata(grids, config.vision, pad_to=pixels.shape[0])
  return ModelInputs(input_ids, mask, positions, pixels, meta)


def hidden_states(model: Any, inputs: ModelInputs, *, image_embeds: jax.Array | None = None
                  ) -> jax.Array:
  """The model's final hidden states for `inputs`.  # [batch, time, hidden]

  `image_embeds` (precomputed `encode_images` rows, in the order of the image tokens of the
  flattened batch) replaces running the vision tower on `inputs.pixel_values`.
  """
  if image_embeds is not None:
    return model.hidden_states(inputs.input_ids, inputs.attention_mask,
                               position_ids=inputs.position_ids, image_embeds=image_embeds)
  if inputs.has_images:
    return model.hidden_states(inputs.input_ids, inputs.attention_mask, inputs.pixel_values,
                               position_ids=inputs.position_ids, vision_meta=inputs.vision_meta)
  return model.hidden_states(inputs.input_ids, inputs.attention_mask,
                             position_ids=inputs.position_ids)


def input_shardings(inputs: ModelInputs, mesh: Mesh) -> ModelInputs:
  """Shardings of `inputs`: rows over the data-parallel axes (position ids [3, B, T] on their
  batch axis 1); image patches and vision metadata replicated (every device can then embed
  the images its rows refer to)."""
  replicated = NamedSharding(mesh, PartitionSpec())
  rows = NamedSharding(mesh, batch_spec(2))
  positions = inputs.position_ids
  pos_sharding = NamedSharding(mesh, batch_spec(positions.ndim, batch_dim=positions.ndim - 2))
  return ModelInputs(
      input_ids=rows, attention_mask=rows, position_ids=pos_sharding,
      pixel_values=None if inputs.pixel_values is None else replicated,
      vision_meta=jax.tree.map(lambda _: replicated, inputs.vision_meta))
