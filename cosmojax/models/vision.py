"""The Qwen2.5-VL vision tower: 3-D patch embedding, windowed ViT with 2-D RoPE, 2x2 merger.

Shape stability under jit. Which patches attend to which (the windows of the windowed blocks,
the per-image segments of the full-attention blocks), the window reordering and the rotary
positions all depend on the image sizes `image_grid_thw`. They are computed once on the host
with NumPy by `vision_metadata(image_grid_thw, config, pad_to=None)` into a `VisionMeta` pytree
of integer arrays whose shapes depend only on the number of patches; the jitted tower takes that
pytree as an input. So one compiled tower serves every mix of image sizes with the same patch
count, and with `pad_to` (patch rows padded with zeros, padding attends only to padding) every
batch padded to the same length.

Attention inside the tower is dense over all patches with a segment mask (patch i sees patch j
iff they share a window, or an image frame in the full-attention blocks): exact, simple, and
cheap at the image sizes of the CPU demo; O(patches^2) memory for large images.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cosmojax.models.configs import VisionConfig
from cosmojax.models.layers import (Dense, Dtype, GatedMLP, RMSNorm, activation, apply_rope,
                                    dot_product_attention, rope_inv_freq)
from cosmojax.parallel import axes

_VISION_NORM_EPS = 1e-6  # transformers hard-codes it for the vision blocks and the merger


@flax.struct.dataclass
class VisionMeta:
  """Host-computed index metadata of one batch of images (see module docstring)."""

  patch_perm: jax.Array  # [patches] int: window order -> input patch row
  rope_hw: jax.Array  # [patches, 2] int: (row, col) of each patch in window order
  window_segments: jax.Array  # [patches] int: window id (padding: -1)
  full_segments: jax.Array  # [patches] int: image-frame id (padding: -1)
  merge_unperm: jax.Array  # [patches / merge_unit] int: merged window order -> input order


def _check_grid(image_grid_thw, m: int) -> np.ndarray:
  grid = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
  for i, (t, h, w) in enumerate(grid):
    if t < 1 or h < 1 or w < 1 or h % m or w % m:
      raise ValueError(f"image_grid_thw[{i}] = {[int(t), int(h), int(w)]}: t, h, w must be "
                       f"positive and h, w multiples of spatial_merge_size {m}")
  return grid


def num_image_tokens(image_grid_thw, config: VisionConfig) -> int:
  """Number of merged image tokens (= image placeholder tokens in the prompt)."""
  grid = _check_grid(image_grid_thw, config.spatial_merge_size)
  return int(grid.prod(axis=1).sum()) // config.merge_unit


def _window_index(grid: np.ndarray, c: VisionConfig) -> tuple[np.ndarray, np.ndarray]:
  """transformers' get_vision_window_index: merged-unit order and window boundaries."""
  m = c.spatial_merge_size
  win = c.window_size // m // c.patch_size  # window side in merged units
  index_parts, cu = [], [0]
  offset = 0
  for t, h, w in grid:
    lh, lw = h // m, w // m
    index = np.arange(t * lh * lw).reshape(t, lh, lw)
    pad_h, pad_w = win - lh % win, win - lw % win
    nh, nw = (lh + pad_h) // win, (lw + pad_w) // win
    padded = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-100)
    padded = padded.reshape(t, nh, win, nw, win).transpose(0, 1, 3, 2, 4)
    padded = padded.reshape(t, nh * nw, win, win)
    seqlens = (padded != -100).sum(axis=(2, 3)).reshape(-1)
    flat = padded.reshape(-1)
    index_parts.append(flat[flat != -100] + offset)
    cu.extend((np.cumsum(seqlens) * c.merge_unit + cu[-1]).tolist())
    offset += t * lh * lw
  cu_arr = np.asarray(cu)
  cu_arr = cu_arr[np.concatenate([[True], np.diff(cu_arr) != 0])]  # unique_consecutive
  return np.concatenate(index_parts), cu_arr


def _rope_positions(grid: np.ndarray, m: int) -> np.ndarray:
  """(row, col) of every patch in the processor's merge-block-major patch order."""
  parts = []
  for t, h, w in grid:
    hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    block = lambda a: a.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
    parts.append(np.tile(np.stack([block(hpos), block(wpos)], axis=-1), (t, 1)))
  return np.concatenate(parts)


def vision_metadata(image_grid_thw, config: VisionConfig, pad_to: int | None = None
                    ) -> VisionMeta:
  """Index metadata of the vision tower for images of grid sizes `image_grid_thw` [n, 3].

  Host-side NumPy; call outside jit with a concrete grid. `pad_to` pads to that many patches
  (a multiple of the merge unit): pixel rows beyond the real patches are ignored, and so are the
  trailing merged rows of the tower's output.
  """
  grid = _check_grid(image_grid_thw, config.spatial_merge_size)
  unit = config.merge_unit
  n = int(grid.prod(axis=1).sum())
  total = n if pad_to is None else int(pad_to)
  if total < n or total % unit:
    raise ValueError(f"pad_to={pad_to} must be >= the {n} patches of image_grid_thw and a "
                     f"multiple of the merge unit {unit}")
  window_index, cu_window = _window_index(grid, config)
  cu_full = np.concatenate([[0], np.cumsum(np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0]))])
  patch_perm = (window_index[:, None] * unit + np.arange(unit)).reshape(-1)
  pos = np.arange(n)
  pad = np.arange(n, total)
  return VisionMeta(
      patch_perm=np.concatenate([patch_perm, pad]).astype(np.int32),
      rope_hw=np.concatenate([_rope_positions(grid, config.spatial_merge_size)[patch_perm],
                              np.zeros((total - n, 2), np.int64)]).astype(np.int32),
      window_segments=np.concatenate([np.searchsorted(cu_window, pos, "right") - 1,
                                      np.full(total - n, -1)]).astype(np.int32),
      full_segments=np.concatenate([np.searchsorted(cu_full, pos, "right") - 1,
                                    np.full(total - n, -1)]).astype(np.int32),
      merge_unperm=np.concatenate([np.argsort(window_index),
                                   np.arange(n // unit, total // unit)]).astype(np.int32),
  )


class VisionAttention(nnx.Module):
  """Bidirectional multi-head attention with 2-D RoPE and a boolean patch mask."""

  def __init__(self, c: VisionConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs | None):
    d, n = c.hidden_size, c.num_heads
    h = d // n
    kw = dict(use_bias=True, stddev=c.initializer_range, dtype=dtype, param_dtype=param_dtype,
              rngs=rngs)
    qkv_axes = (axes.VISION_EMBED, axes.VISION_HEADS, axes.HEAD_DIM)
    self.scale = h**-0.5
    self.q = Dense((d,), (n, h), qkv_axes, bias_axes=qkv_axes[1:], **kw)
    self.k = Dense((d,), (n, h), qkv_axes, bias_axes=qkv_axes[1:], **kw)
    self.v = Dense((d,), (n, h), qkv_axes, bias_axes=qkv_axes[1:], **kw)
    self.proj = Dense((n, h), (d,), (axes.VISION_HEADS, axes.HEAD_DIM, axes.VISION_EMBED),
                      bias_axes=(axes.VISION_EMBED,), **kw)

  def __call__(self, x_pd, cos, sin, mask_pp):
    q = apply_rope(self.q(x_pd), cos, sin)[None]
    k = apply_rope(self.k(x_pd), cos, sin)[None]
    out = dot_product_attention(q, k, self.v(x_pd)[None], mask_pp[None], self.scale)
    return self.proj(out[0])


class VisionBlock(nnx.Module):
  def __init__(self, c: VisionConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs | None):
    self.norm1 = RMSNorm(c.hidden_size, _VISION_NORM_EPS, dtype=dtype, param_dtype=param_dtype)
    self.attn = VisionAttention(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm2 = RMSNorm(c.hidden_size, _VISION_NORM_EPS, dtype=dtype, param_dtype=param_dtype)
    self.mlp = GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, use_bias=True,
                        embed_axis=axes.VISION_EMBED, mlp_axis=axes.VISION_MLP,
                        stddev=c.initializer_range, dtype=dtype, param_dtype=param_dtype,
                        rngs=rngs)

  def __call__(self, x_pd, cos, sin, mask_pp):
    x_pd = x_pd + self.attn(self.norm1(x_pd), cos, sin, mask_pp)
    return x_pd + self.mlp(self.norm2(x_pd))


class PatchMerger(nnx.Module):
  """Groups of merge_unit patches: norm, concatenate, MLP (Linear-GELU-Linear) to text width."""

  def __init__(self, c: VisionConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs | None):
    wide = c.hidden_size * c.merge_unit
    kw = dict(use_bias=True, stddev=c.initializer_range, dtype=dtype, param_dtype=param_dtype,
              rngs=rngs)
    self.wide = wide
    self.norm = RMSNorm(c.hidden_size, _VISION_NORM_EPS, dtype=dtype, param_dtype=param_dtype)
    self.fc1 = Dense((wide,), (wide,), (axes.VISION_EMBED, axes.VISION_MLP),
                     bias_axes=(axes.VISION_MLP,), **kw)
    self.fc2 = Dense((wide,), (c.out_hidden_size,), (axes.VISION_MLP, axes.EMBED),
                     bias_axes=(axes.EMBED,), **kw)

  def __call__(self, x_pd):
    x = self.norm(x_pd).reshape(-1, self.wide)
    return self.fc2(activation("gelu")(self.fc1(x)))


class VisionTower(nnx.Module):
  """pixel patches [patches, patch_dim] -> merged image tokens [patches / merge_unit, out]."""

  def __init__(self, c: VisionConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs | None):
    self.config = c
    self.dtype = dtype
    self.patch_embed = Dense((c.patch_dim,), (c.hidden_size,), (axes.PATCH, axes.VISION_EMBED),
                             use_bias=False, stddev=c.initializer_range, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)
    self.blocks = nnx.List([VisionBlock(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                            for _ in range(c.depth)])
    self.merger = PatchMerger(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, pixel_values: jax.Array, meta: VisionMeta) -> jax.Array:
    c = self.config
    if pixel_values.shape != (meta.patch_perm.shape[0], c.patch_dim):
      raise ValueError(f"pixel_values shape {pixel_values.shape} != (patches "
                       f"{meta.patch_perm.shape[0]} of the image metadata, patch_dim "
                       f"{c.patch_dim})")
    x = self.patch_embed(jnp.asarray(pixel_values)[meta.patch_perm])
    inv_freq = rope_inv_freq(c.hidden_size // c.num_heads // 2, c.rope_theta)
    angle = jnp.asarray(meta.rope_hw, jnp.float32)[:, :, None] * inv_freq  # [p, 2, hd/4]
    angle = angle.reshape(angle.shape[0], -1)  # [h freqs, w freqs]
    angle = jnp.concatenate([angle, angle], axis=-1)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    win, full = jnp.asarray(meta.window_segments), jnp.asarray(meta.full_segments)
    window_mask = win[:, None] == win[None, :]
    full_mask = full[:, None] == full[None, :]
    for i, block in enumerate(self.blocks):
      x = block(x, cos, sin, full_mask if i in c.fullatt_block_indexes else window_mask)
    return self.merger(x)[meta.merge_unperm]
