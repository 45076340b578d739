"""The Qwen2.5-VL vision tower: 3-D patch embedding, windowed ViT with 2-D RoPE, 2x2 merger.

Shape stability under jit. Which patches attend to which (the windows of the windowed blocks,
the per-image segments of the full-attention blocks), the window reordering and the rotary
positions all depend on the image sizes `image_grid_thw`. They are computed once on the host
with NumPy by `vision_metadata(image_grid_thw, config, pad_to=None)` into a `VisionMeta` pytree
of integer arrays whose shapes depend only on the number of patches; the jitted tower takes that
pytree as an input. So one compiled tower serves every mix of image sizes with the same patch
count, and with `pad_to` (patch rows padded with zeros, padding attends only to padding) every
batch padded to the same length.

Attention inside the tower is segment attention: patch i sees patch j iff they share a window
(windowed blocks) or an image frame (full-attention blocks). Segments are contiguous runs of
patches in window order, so a block of queries only needs the keys within one segment length
on either side: `segment_attention` computes exactly that band, O(patches x (block + 2 band))
instead of O(patches^2). The band (the longest segment, rounded up to a power of two so that
few values compile) is host-side metadata like the segments themselves.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cosmojax.models.configs import VisionConfig
from cosmojax.models.layers import (MASK_VALUE, Dense, Dtype, GatedMLP, RMSNorm, activation,
                                    apply_rope, dot_product_attention, rope_inv_freq)
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
  # Static: the longest window / image-frame segment, rounded up to a power of two (None:
  # dense attention over all patches with the segment mask).
  window_band: int | None = flax.struct.field(pytree_node=False, default=None)
  full_band: int | None = flax.struct.field(pytree_node=False, default=None)


def _band(longest: int) -> int:
  """The static band for segments of at most `longest` patches: a power of two >= 8."""
  return max(8, 1 << (int(longest) - 1).bit_length())


_QUERY_BLOCK = 64  # queries per band block of `segment_attention`


def segment_attention(q_pnh: jax.Array, k_pnh: jax.Array, v_pnh: jax.Array,
                      segments_p: jax.Array, band: int | None, scale: float) -> jax.Array:
  """softmax_j(scale q_i . k_j over j with segment[j] == segment[i]) . v_j.  # [p, heads, hd]

  Segments must be contiguous runs of at most `band` patches (`vision_metadata` checks it).
  Queries go in blocks of B = max(`_QUERY_BLOCK`, band); block b's queries [b B, b B + B)
  can only see keys in [b B - band, b B + B + band): the previous block's last `band` keys,
  its own block and the next block's first `band` keys. Those three are static slices of the
  blocked keys (no gather, so the backward pass is slicing too): exact, and linear in the
  number of patches. `band=None` falls back to dense masked attention.
  """
  p, n, h = q_pnh.shape
  block = max(_QUERY_BLOCK, band or 0)
  if band is None or p <= 3 * block:
    mask = segments_p[:, None] == segments_p[None, :]
    return dot_product_attention(q_pnh[None], k_pnh[None], v_pnh[None], mask[None], scale)[0]
  nb = -(-p // block)
  tail = nb * block - p

  def blocked(x, value):  # [p, ...] -> [nb + 2, block, ...]: an empty block on each side
    x = jnp.pad(x, ((block, tail + block),) + ((0, 0),) * (x.ndim - 1), constant_values=value)
    return x.reshape((nb + 2, block) + x.shape[1:])

  def spans(x):  # [nb + 2, block, ...] -> [nb, band + block + band, ...]
    return jnp.concatenate([x[:-2, block - band:], x[1:-1], x[2:, :band]], axis=1)

  # Padding keys (-2) and padding queries (-3) match no real segment.
  k, v, seg_k = spans(blocked(k_pnh, 0)), spans(blocked(v_pnh, 0)), spans(blocked(segments_p, -2))
  q = blocked(q_pnh, 0)[1:-1]
  seg_q = blocked(segments_p, -3)[1:-1]
  scores = jnp.einsum("bqnh,bsnh->bnqs", q, k, preferred_element_type=jnp.float32)
  mask = seg_q[:, :, None] == seg_k[:, None, :]  # [nb, block, span]
  scores = jnp.where(mask[:, None], scores * scale, MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_pnh.dtype)
  out = jnp.einsum("bnqs,bsnh->bqnh", probs, v)
  return out.reshape(nb * block, n, h)[:p]


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
      # Segments are contiguous in window order; the longest bounds the attention band.
      window_band=_band(np.diff(cu_window).max()),
      full_band=_band((grid[:, 1] * grid[:, 2]).max()),
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

  def __call__(self, x_pd, cos, sin, segments_p, band):
    q = apply_rope(self.q(x_pd), cos, sin)
    k = apply_rope(self.k(x_pd), cos, sin)
    return self.proj(segment_attention(q, k, self.v(x_pd), segments_p, band, self.scale))


class VisionBlock(nnx.Module):
  def __init__(self, c: VisionConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs | None):
    self.norm1 = RMSNorm(c.hidden_size, _VISION_NORM_EPS, dtype=dtype, param_dtype=param_dtype)
    self.attn = VisionAttention(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm2 = RMSNorm(c.hidden_size, _VISION_NORM_EPS, dtype=dtype, param_dtype=param_dtype)
    self.mlp = GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, use_bias=True,
                        embed_axis=axes.VISION_EMBED, mlp_axis=axes.VISION_MLP,
                        stddev=c.initializer_range, dtype=dtype, param_dtype=param_dtype,
                        rngs=rngs)

  def __call__(self, x_pd, cos, sin, segments_p, band):
    x_pd = x_pd + self.attn(self.norm1(x_pd), cos, sin, segments_p, band)
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
    for i, block in enumerate(self.blocks):
      if i in c.fullatt_block_indexes:
        x = block(x, cos, sin, full, meta.full_band)
      else:
        x = block(x, cos, sin, win, meta.window_band)
    return self.merger(x)[meta.merge_unperm]
