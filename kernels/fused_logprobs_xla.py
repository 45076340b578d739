"""Chunked XLA backend of the fused token log-probs: the portable path (CPU runs use it).

`lax.fori_loop`s over token blocks and vocabulary blocks compute one [block_n, block_v]
tile of logits at a time (see `logprob_tiles` for the maths), so no [N, V] array exists in
the forward or the backward. Sizes need not be multiples of the blocks: the last block of a
dimension is moved back to end at the array's edge (`dynamic_slice` clamps the same way) and
the entries an earlier block already covered are masked out, so nothing is padded or copied.

Forward: token blocks outside, vocabulary blocks inside, online log-sum-exp per row.
Backward: vocabulary blocks outside, token blocks inside, so that each [H, block_v] slice of
dW is finished (float32 accumulator) before it is written, and dh accumulates in a float32
[N, H] array, the only temporary that grows with the problem (N * H * 4 bytes).
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp

from kernels import logprob_tiles as tiles


def _cdiv(a: int, b: int) -> int:
  """Number of blocks of size b covering a."""
  return -(-a // b)


def _block_start(b: jax.Array, block: int, size: int) -> jax.Array:
  """Start of block `b`, moved back so that the block ends inside the array."""
  return jnp.minimum(b * block, size - block)


def _fresh(b: jax.Array, start: jax.Array, block: int) -> jax.Array:
  """[block] bool: the entries of block `b` (placed at `start`) no earlier block covered."""
  return start + jnp.arange(block) >= b * block


def _scaled_logits(h_bh, w_hv, temperature: float, fresh_v, cols_v, t_b1):
  """Tile of z = h W / T with stale columns masked, and the target indicator."""
  z = jnp.dot(h_bh, w_hv, preferred_element_type=jnp.float32)
  if temperature != 1.0:
    z = z / temperature
  z = jnp.where(fresh_v[None, :], z, tiles.MASK_VALUE)
  is_target = (cols_v[None, :] == t_b1) & fresh_v[None, :]
  return z, is_target


def forward(
    h_nh: jax.Array,  # [tokens, hidden]
    w_hv: jax.Array,  # [hidden, vocab]
    t_n: jax.Array,  # [tokens] int32
    *,
    temperature: float,
    block_n: int,
    block_v: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns (log p(target), lse, entropy), each [tokens] float32."""
  n, _ = h_nh.shape
  v = w_hv.shape[1]
  bn, bv = min(block_n, n), min(block_v, v)

  def token_block(i, outs):
    r0 = _block_start(i, bn, n)
    h = lax.dynamic_slice_in_dim(h_nh, r0, bn, 0)
    t = lax.dynamic_slice_in_dim(t_n, r0, bn)[:, None]

    def vocab_block(j, stats):
      c0 = _block_start(j, bv, v)
      w = lax.dynamic_slice_in_dim(w_hv, c0, bv, 1)
      z, is_target = _scaled_logits(h, w, temperature, _fresh(j, c0, bv), c0 + jnp.arange(bv), t)
      return tiles.update_stats(stats, z, is_target)

    stats = lax.fori_loop(0, _cdiv(v, bv), vocab_block, tiles.init_stats(bn))
    return tuple(
        lax.dynamic_update_slice_in_dim(out, x[:, 0], r0, 0)
        for out, x in zip(outs, tiles.finalize_stats(stats))
    )

  zeros = jnp.zeros((n,), jnp.float32)
  return lax.fori_loop(0, _cdiv(n, bn), token_block, (zeros, zeros, zeros))


def backward(
    h_nh: jax.Array,  # [tokens, hidden]
    w_hv: jax.Array,  # [hidden, vocab]
    t_n: jax.Array,  # [tokens] int32
    lse_n: jax.Array,  # [tokens] float32
    ent_n: jax.Array | None,  # [tokens] float32; None without the entropy output
    g_logp_n: jax.Array,  # [tokens] float32
    g_ent_n: jax.Array | None,  # [tokens] float32; None without the entropy output
    *,
    temperature: float,
    block_n: int,
    block_v: int,
) -> tuple[jax.Array, jax.Array]:
  """Returns (d hidden [tokens, hidden], d lm_head [hidden, vocab]) in the input dtypes."""
  n, hdim = h_nh.shape
  v = w_hv.shape[1]
  bn, bv = min(block_n, n), min(block_v, v)
  per_token = [x for x in (t_n, lse_n, ent_n, g_logp_n, g_ent_n) if x is not None]
  has_entropy = ent_n is not None

  def vocab_block(j, carry):
    dh_nh, dw_hv = carry
    c0 = _block_start(j, bv, v)
    fresh_v = _fresh(j, c0, bv)
    w = lax.dynamic_slice_in_dim(w_hv, c0, bv, 1)

    def token_block(i, inner):
      dh_nh, dw_acc = inner
      r0 = _block_start(i, bn, n)
      h = lax.dynamic_slice_in_dim(h_nh, r0, bn, 0)
      t, lse, *rest = [lax.dynamic_slice_in_dim(x, r0, bn)[:, None] for x in per_token]
      ent, g_logp, g_ent = rest if has_entropy else (None, rest[0], None)
      z, is_target = _scaled_logits(h, w, temperature, fresh_v, c0 + jnp.arange(bv), t)
      dz = tiles.dlogits(z, is_target, lse, ent, g_logp, g_ent)
      dz = jnp.where(_fresh(i, r0, bn)[:, None], dz, 0.0)
      dz = (dz / temperature if temperature != 1.0 else dz).astype(h_nh.dtype)
      dw_acc = dw_acc + lax.dot_general(
          h, dz, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
      dh_rows = lax.dynamic_slice_in_dim(dh_nh, r0, bn, 0) + lax.dot_general(
          dz, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
      return lax.dynamic_update_slice_in_dim(dh_nh, dh_rows, r0, 0), dw_acc

    dh_nh, dw_acc = lax.fori_loop(
        0, _cdiv(n, bn), token_block, (dh_nh, jnp.zeros((hdim, bv), jnp.float32)))
    old = lax.dynamic_slice_in_dim(dw_hv, c0, bv, 1)
    new = jnp.where(fresh_v[None, :], dw_acc.astype(dw_hv.dtype), old)
    return dh_nh, lax.dynamic_update_slice_in_dim(dw_hv, new, c0, 1)

  init = (jnp.zeros((n, hdim), jnp.float32), jnp.zeros_like(w_hv))
  dh_nh, dw_hv = lax.fori_loop(0, _cdiv(v, bv), vocab_block, init)
  return dh_nh.astype(h_nh.dtype), dw_hv
