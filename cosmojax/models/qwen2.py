"""The Qwen2 decoder (text LM alone, the language model of Qwen2.5-VL) and the shared LM API.

`CausalLM` holds what every decoder-only backbone here exposes to the framework:
  - `hidden_states(...)`  final hidden states after the last norm  # [batch, time, hidden]
  - `lm_head_matrix()`    the LM head as [hidden, vocab] (the embedding transposed when tied)
  - `__call__(...)`       logits, float32  # [batch, time, vocab]
  - `init_cache`, `prefill`, `decode_step`: incremental decoding over an explicit `KVCache`
    pytree, all shape-stable so they run inside `jax.jit` / `lax.while_loop` on
    `nnx.merge(graphdef, state)`.
Default positions are 0, 1, ... over the real tokens of each row (left padding gets 0), i.e.
`cumsum(attention_mask) - 1`, which is what transformers' generate passes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cosmojax.models import kv_cache as kv_lib
from cosmojax.models.configs import TextConfig
from cosmojax.models.layers import (Dense, Dtype, Embed, GatedMLP, RMSNorm, apply_rope,
                                    dot_product_attention, rope_cos_sin, rope_inv_freq)
from cosmojax.parallel import axes


class Attention(nnx.Module):
  """Grouped-query self-attention with q/k/v biases and RoPE, optionally through a KV cache."""

  def __init__(self, c: TextConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs | None):
    d, n, k, h = c.hidden_size, c.num_heads, c.num_kv_heads, c.dim_per_head
    kw = dict(stddev=c.initializer_range, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.scale = h**-0.5
    self.q = Dense((d,), (n, h), (axes.EMBED, axes.HEADS, axes.HEAD_DIM), use_bias=True,
                   bias_axes=(axes.HEADS, axes.HEAD_DIM), **kw)
    self.k = Dense((d,), (k, h), (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM), use_bias=True,
                   bias_axes=(axes.KV_HEADS, axes.HEAD_DIM), **kw)
    self.v = Dense((d,), (k, h), (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM), use_bias=True,
                   bias_axes=(axes.KV_HEADS, axes.HEAD_DIM), **kw)
    self.o = Dense((n, h), (d,), (axes.HEADS, axes.HEAD_DIM, axes.EMBED), use_bias=False, **kw)

  def __call__(self, x_btd: jax.Array, cos: jax.Array, sin: jax.Array, mask_bts: jax.Array,
               kv: tuple[jax.Array, jax.Array] | None = None,
               index: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Attends x to itself, or (with kv) writes x's keys/values at slot `index` and attends to
    the whole cache; mask_bts says which keys each query may see. Returns (out, (k, v))."""
    q = apply_rope(self.q(x_btd), cos, sin)
    k = apply_rope(self.k(x_btd), cos, sin)
    v = self.v(x_btd)
    if kv is not None:
      start = (0, index, 0, 0)
      k = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), start)
      v = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), start)
    out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask_bts, self.scale)
    return self.o(out), (k, v)


class DecoderLayer(nnx.Module):
  """Pre-norm block: x += attn(norm(x)); x += mlp(norm(x))."""

  def __init__(self, c: TextConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs | None):
    self.input_norm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
    self.attn = Attention(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.post_norm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
    self.mlp = GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, use_bias=False,
                        embed_axis=axes.EMBED, mlp_axis=axes.MLP, stddev=c.initializer_range,
                        dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, cos, sin, mask_bts, kv=None, index=None):
    h, kv = self.attn(self.input_norm(x), cos, sin, mask_bts, kv, index)
    x = x + h
    return x + self.mlp(self.post_norm(x)), kv


class Decoder(nnx.Module):
  """Token embedding, decoder layers and the final norm of a Qwen2 model."""

  def __init__(self, c: TextConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs | None):
    self.config = c
    self.embed = Embed(c.vocab_size, c.hidden_size, stddev=c.initializer_range, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)
    self.layers = nnx.List([DecoderLayer(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                            for _ in range(c.num_layers)])
    self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x_btd: jax.Array, positions: jax.Array, mask_bts: jax.Array,
               cache: kv_lib.KVCache | None = None):
    """Runs the layers on embeddings x. Returns (hidden [B, T, D] after the final norm,
    updated (keys, values) per layer when a cache is given, else None)."""
    c = self.config
    cos, sin = rope_cos_sin(positions, rope_inv_freq(c.dim_per_head, c.rope_theta),
                            c.mrope_section)
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      kv = None if cache is None else (cache.keys[i], cache.values[i])
      x_btd, (k, v) = layer(x_btd, cos, sin, mask_bts, kv, None if cache is None else cache.index)
      new_k.append(k)
      new_v.append(v)
    return self.norm(x_btd), (None if cache is None else (tuple(new_k), tuple(new_v)))


def default_positions(attention_mask: jax.Array) -> jax.Array:
  """0, 1, ... over each row's real tokens; padding gets 0.  # [batch, time] int32"""
  am = attention_mask.astype(jnp.int32)
  return jnp.where(am > 0, jnp.cumsum(am, axis=-1) - 1, 0)


def _ones_mask(input_ids: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
  if attention_mask is None:
    return jnp.ones(input_ids.shape, bool)
  if attention_mask.shape != input_ids.shape:
    raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape "
                     f"{input_ids.shape}")
  return attention_mask.astype(bool)


class CausalLM(nnx.Module):
  """Decoder + LM head with the framework's forward, hidden-state and cached-decoding API.

  Subclasses set `self.text` (TextConfig), `self.decoder` and `self.lm_head` (None when tied)
  through `_init_lm`, and may override `_embed` / `_base_positions` to add modalities.
  """

  def _init_lm(self, c: TextConfig, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs | None):
    self.text = c
    self.dtype = dtype
    self.decoder = Decoder(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if c.tie_word_embeddings:
      self.lm_head = None
    else:
      self.lm_head = Dense((c.hidden_size,), (c.vocab_size,), (axes.EMBED, axes.VOCAB),
                           use_bias=False, stddev=c.initializer_range, dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs)

  # -- hooks ------------------------------------------------------------------------------------
  def _embed(self, input_ids: jax.Array, image_embeds: jax.Array | None) -> jax.Array:
    if image_embeds is not None:
      raise ValueError(f"{type(self).__name__} is text-only: image_embeds must be None")
    return self.decoder.embed(input_ids)

  def _base_positions(self, input_ids, mask, image_grid_thw) -> jax.Array:
    if image_grid_thw is not None:
      raise ValueError(f"{type(self).__name__} is text-only: image_grid_thw must be None")
    return default_positions(mask)

  # -- full forward -----------------------------------------------------------------------------
  def lm_head_matrix(self) -> jax.Array:
    """The LM head as [hidden, vocab] in the compute dtype (like the hidden states, also when
    parameters are stored in another dtype): logits = hidden_states @ lm_head_matrix()."""
    if self.lm_head is None:
      return self.decoder.embed.matrix_t().astype(self.dtype)
    return self.lm_head.kernel[...].astype(self.dtype)

  def logits(self, h: jax.Array) -> jax.Array:
    """LM head on hidden states [..., hidden] -> float32 logits [..., vocab]."""
    w = self.lm_head_matrix()
    return jnp.einsum("...d,dv->...v", h.astype(self.dtype), w,
                      preferred_element_type=jnp.float32)

  def _hidden(self, input_ids, attention_mask=None, position_ids=None, image_embeds=None,
              image_grid_thw=None) -> jax.Array:
    mask = _ones_mask(input_ids, attention_mask)
    if position_ids is None:
      position_ids = self._base_positions(input_ids, mask, image_grid_thw)
    x = self._embed(input_ids, image_embeds)
    t = input_ids.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    h, _ = self.decoder(x, position_ids, causal[None] & mask[:, None, :])
    return h

  # -- incremental decoding ---------------------------------------------------------------------
  def init_cache(self, batch_size: int, max_len: int, dtype: Dtype | None = None) -> kv_lib.KVCache:
    """An empty KV cache for `batch_size` rows of up to `max_len` tokens (prompt + generated)."""
    c = self.text
    return kv_lib.init_cache(c.num_layers, batch_size, max_len, c.num_kv_heads, c.dim_per_head,
                             dtype or self.dtype)

  def _extend(self, input_ids, cache: kv_lib.KVCache, attention_mask, position_ids,
              image_embeds=None, image_grid_thw=None) -> tuple[jax.Array, kv_lib.KVCache]:
    """Appends T tokens at slot cache.index; returns (last-position logits [B, V], cache)."""
    t = input_ids.shape[1]
    mask = _ones_mask(input_ids, attention_mask)
    if position_ids is None:
      base = self._base_positions(input_ids, mask, image_grid_thw)
      offset = cache.next_position[:, None]
      position_ids = base + (offset if base.ndim == 2 else offset[None])
    valid = jax.lax.dynamic_update_slice(cache.valid, mask, (0, cache.index))
    query_slot = cache.index + jnp.arange(t)
    mask_bts = valid[:, None, :] & (jnp.arange(cache.max_len)[None, :] <= query_slot[:, None])
    x = self._embed(input_ids, image_embeds)
    h, (keys, values) = self.decoder(x, position_ids, mask_bts, cache)
    pos_bt = position_ids if position_ids.ndim == 2 else position_ids.max(axis=0)
    last = jnp.max(jnp.where(mask, pos_bt, -1), axis=1) + 1
    cache = kv_lib.KVCache(keys=keys, values=values, valid=valid, index=cache.index + t,
                           next_position=jnp.maximum(cache.next_position, last).astype(jnp.int32))
    return self.logits(h[:, -1]), cache

  def decode_step(self, tokens_b: jax.Array, cache: kv_lib.KVCache
                  ) -> tuple[jax.Array, kv_lib.KVCache]:
    """One token per row at slot cache.index and position cache.next_position.

    Returns (logits [batch, vocab] float32 for the token after it, the advanced cache).
    """
    ids = tokens_b[:, None]
    return self._extend(ids, cache, jnp.ones(ids.shape, bool), None)


class Qwen2ForCausalLM(CausalLM):
  """Qwen2 text LM, numerically equal to transformers' `Qwen2ForCausalLM`."""

  def __init__(self, config: TextConfig, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs | None = None):
    if config.mrope_section is not None:
      raise ValueError("Qwen2ForCausalLM takes 1-D RoPE: config.mrope_section must be None")
    self.config = config
    self._init_lm(config, dtype, param_dtype, rngs if rngs is not None else nnx.Rngs(0))

  def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                    position_ids: jax.Array | None = None) -> jax.Array:
    """Final hidden states after the last norm.  # [batch, time, hidden]"""
    return self._hidden(input_ids, attention_mask, position_ids)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               position_ids: jax.Array | None = None) -> jax.Array:
    """Logits, float32.  # [batch, time, vocab]"""
    return self.logits(self.hidden_states(input_ids, attention_mask, position_ids))

  def prefill(self, input_ids: jax.Array, cache: kv_lib.KVCache,
              attention_mask: jax.Array | None = None, position_ids: jax.Array | None = None
              ) -> tuple[jax.Array, kv_lib.KVCache]:
    """Writes a (left-padded) prompt [B, T] into the cache at slot cache.index.

    Returns (logits [batch, vocab] float32 of the token after the prompt, the cache).
    """
    return self._extend(input_ids, cache, attention_mask, position_ids)
