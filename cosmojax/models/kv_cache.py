"""The functional KV cache of the decoders: a pytree of preallocated buffers and a write index.

Slots are written left to right for the whole batch at once (prompts are left padded, so
every row's next token goes to the same slot); `valid` marks the slots that hold real tokens,
so padding slots are never attended to. `next_position` is each row's (M-)RoPE position of
the next text token: after a Qwen2.5-VL prompt it is max(prompt positions) + 1, which equals
transformers' `cache_position + rope_deltas` during generation.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
  keys: tuple[jax.Array, ...]  # per layer [batch, max_len, kv_heads, head_dim]
  values: tuple[jax.Array, ...]  # per layer [batch, max_len, kv_heads, head_dim]
  valid: jax.Array  # [batch, max_len] bool: the slot holds a real (non-padding) token
  index: jax.Array  # [] int32: the next slot to write
  next_position: jax.Array  # [batch] int32: RoPE position of the next text token

  @property
  def batch_size(self) -> int:
    return self.valid.shape[0]

  @property
  def max_len(self) -> int:
    return self.valid.shape[1]

  def repeat(self, n: int) -> KVCache:
    """Each row repeated n times in place (row i -> rows i*n .. i*n+n-1): one prefill, n samples."""
    rep = lambda x: jnp.repeat(x, n, axis=0)
    return KVCache(keys=tuple(map(rep, self.keys)), values=tuple(map(rep, self.values)),
                   valid=rep(self.valid), index=self.index,
                   next_position=rep(self.next_position))


def init_cache(num_layers: int, batch_size: int, max_len: int, kv_heads: int, head_dim: int,
               dtype: jnp.dtype) -> KVCache:
  """An empty cache: zero buffers, no valid slot, index 0, next position 0."""
  shape = (batch_size, max_len, kv_heads, head_dim)
  return KVCache(
      keys=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
      values=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
      valid=jnp.zeros((batch_size, max_len), bool),
      index=jnp.zeros((), jnp.int32),
      next_position=jnp.zeros((batch_size,), jnp.int32),
  )
