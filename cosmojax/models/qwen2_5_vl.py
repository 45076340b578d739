"""Qwen2.5-VL in Flax NNX, numerically equal to transformers' Qwen2_5_VLForConditionalGeneration.

Images go through the vision tower once (`encode_images`), and their merged tokens replace the
image placeholder tokens of the prompt before the M-RoPE Qwen2 decoder. Every entry point
accepts precomputed `image_embeds` (rollout: encode once per prompt, decode many samples) and
precomputed `position_ids` / `vision_meta` (needed under jit, where the host-side index
computations cannot see concrete `image_grid_thw` / `input_ids`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cosmojax.models import kv_cache as kv_lib
from cosmojax.models.configs import Qwen2_5_VLConfig
from cosmojax.models.layers import Dtype
from cosmojax.models.qwen2 import CausalLM, default_positions
from cosmojax.models.rope_index import get_rope_index
from cosmojax.models.vision import VisionMeta, VisionTower, num_image_tokens, vision_metadata


def _concrete(name: str, x) -> np.ndarray:
  if isinstance(x, jax.core.Tracer):
    raise ValueError(
        f"{name} is traced (inside jit): compute position_ids with "
        "cosmojax.models.get_rope_index and vision metadata with "
        "cosmojax.models.vision_metadata on the host and pass them in")
  return np.asarray(x)


class Qwen2_5_VL(CausalLM):
  """Qwen2.5-VL: `model(input_ids, attention_mask, pixel_values, image_grid_thw)` -> logits."""

  def __init__(self, config: Qwen2_5_VLConfig, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs | None = None):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.config = config
    self.visual = VisionTower(config.vision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self._init_lm(config.text, dtype, param_dtype, rngs)

  # -- images -----------------------------------------------------------------------------------
  def encode_images(self, pixel_values: jax.Array, image_grid_thw=None, *,
                    vision_meta: VisionMeta | None = None) -> jax.Array:
    """Vision tower + merger on patches [patches, patch_dim].  # [num_image_tokens, hidden]

    Give either a concrete `image_grid_thw` [num_images, 3] (metadata computed here, on the
    host) or `vision_meta` from `vision_metadata(...)` (required under jit).
    """
    if vision_meta is None:
      if image_grid_thw is None:
        raise ValueError("encode_images needs image_grid_thw or vision_meta")
      vision_meta = vision_metadata(_concrete("image_grid_thw", image_grid_thw),
                                    self.config.vision)
    return self.visual(pixel_values, vision_meta)

  def _embed(self, input_ids, image_embeds):
    x = self.decoder.embed(input_ids)
    if image_embeds is None:
      return x
    is_image = input_ids == self.config.image_token_id
    if not isinstance(input_ids, jax.core.Tracer):
      count = int(np.sum(np.asarray(is_image)))
      if count > image_embeds.shape[0]:
        raise ValueError(f"input_ids hold {count} image tokens but image_embeds has only "
                         f"{image_embeds.shape[0]} rows")
    # The k-th image token of the flattened batch takes row k of image_embeds.
    row = jnp.cumsum(is_image.reshape(-1)).reshape(is_image.shape) - 1
    row = jnp.clip(row, 0, image_embeds.shape[0] - 1)
    return jnp.where(is_image[..., None], image_embeds.astype(x.dtype)[row], x)

  def _base_positions(self, input_ids, mask, image_grid_thw):
    if image_grid_thw is None:
      return default_positions(mask)
    positions, _ = get_rope_index(_concrete("input_ids", input_ids),
                                  _concrete("image_grid_thw", image_grid_thw),
                                  _concrete("attention_mask", mask), self.config)
    return jnp.asarray(positions)

  def _image_inputs(self, input_ids, pixel_values, image_grid_thw, image_embeds, vision_meta,
                    position_ids):
    if (pixel_values is not None or image_embeds is not None) and (
        position_ids is None and image_grid_thw is None):
      raise ValueError("a prompt with images needs position_ids (from get_rope_index) or "
                       "image_grid_thw to compute them")
    if pixel_values is None:
      return image_embeds
    if image_embeds is not None:
      raise ValueError("give pixel_values or image_embeds, not both")
    if image_grid_thw is not None and not isinstance(input_ids, jax.core.Tracer):
      want = num_image_tokens(_concrete("image_grid_thw", image_grid_thw), self.config.vision)
      have = int(np.sum(np.asarray(input_ids) == self.config.image_token_id))
      if want != have:
        raise ValueError(f"image_grid_thw gives {want} image tokens but input_ids hold {have} "
                         f"image tokens (id {self.config.image_token_id})")
    return self.encode_images(pixel_values, image_grid_thw, vision_meta=vision_meta)

  # -- full forward -----------------------------------------------------------------------------
  def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                    pixel_values: jax.Array | None = None, image_grid_thw=None,
                    position_ids: jax.Array | None = None, *,
                    image_embeds: jax.Array | None = None,
                    vision_meta: VisionMeta | None = None) -> jax.Array:
    """Final hidden states after the last norm.  # [batch, time, hidden]

    Args:
      input_ids: [batch, time] ids, images as runs of image_token_id placeholders.
      attention_mask: [batch, time] 1 real / 0 padding (left padding for generation).
      pixel_values: [patches, patch_dim] patches of all images, as the HF processor makes them.
      image_grid_thw: [num_images, 3] patch grid of each image.
      position_ids: [3, batch, time] M-RoPE positions; None computes them on the host
        (`get_rope_index`) when image_grid_thw is given, else 0, 1, ... over real tokens.
      image_embeds: [>= num_image_tokens, hidden] precomputed `encode_images` output
        (instead of pixel_values).
      vision_meta: precomputed `vision_metadata(image_grid_thw, ...)`.
    """
    image_embeds = self._image_inputs(input_ids, pixel_values, image_grid_thw, image_embeds,
                                      vision_meta, position_ids)
    return self._hidden(input_ids, attention_mask, position_ids, image_embeds, image_grid_thw)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               pixel_values: jax.Array | None = None, image_grid_thw=None,
               position_ids: jax.Array | None = None, *,
               image_embeds: jax.Array | None = None,
               vision_meta: VisionMeta | None = None) -> jax.Array:
    """Logits, float32.  # [batch, time, vocab]  (arguments as `hidden_states`)"""
    return self.logits(self.hidden_states(
        input_ids, attention_mask, pixel_values, image_grid_thw, position_ids,
        image_embeds=image_embeds, vision_meta=vision_meta))

  # -- incremental decoding ---------------------------------------------------------------------
  def prefill(self, input_ids: jax.Array, cache: kv_lib.KVCache,
              attention_mask: jax.Array | None = None, position_ids: jax.Array | None = None, *,
              image_embeds: jax.Array | None = None, image_grid_thw=None
              ) -> tuple[jax.Array, kv_lib.KVCache]:
    """Writes a left-padded prompt [B, T] (with its image tokens) into the cache.

    Positions: `position_ids` [3, B, T] (from `get_rope_index`; required under jit when the
    prompt holds images), else computed from a concrete image_grid_thw, else text positions.
    Returns (logits [batch, vocab] float32 of the token after the prompt, the cache), with
    cache.next_position = max prompt position + 1 for the decode steps.
    """
    image_embeds = self._image_inputs(input_ids, None, image_grid_thw, image_embeds, None,
                                      position_ids)
    return self._extend(input_ids, cache, attention_mask, position_ids, image_embeds,
                        image_grid_thw)
