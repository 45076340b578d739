"""Chunked XLA backend of the fused token log-probs: the portable path (CPU runs use it).

`lax.fori_loop`s over token blocks and vocabulary blocks compute one [block_n, block_v]
tile of logits at a time (see `logprob_tiles` for the maths), so no [N, V] array exists in
the forward or the backward. Sizes need not be multiples of the blocks: the loops run over
the full blocks and a last, smaller block (static size) takes the remainder, so nothing is
padded, copied or masked.

Forward: token blocks outside, vocabulary blocks inside, online log-sum-exp per row.
Backward: vocabulary blocks outside, token blocks inside, so that each [H, block_v] slice of
dW is finished (float32 accumulator) before it is written in place, and dh accumulates in a
float32 [N, H] array, the only temporary that grows with the problem (N * H * 4 bytes).

On XLA:CPU, bfloat16 slicing is not a supported bfloat16 op: XLA converts the whole LM head
to float32 once (hoisted out of the loop) and slices that, a [H, V] float32 temporary that
GPU and TPU do not have.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax
from jax import lax
import jax.numpy as jnp

from kernels import logprob_tiles as tiles

Carry = TypeVar("Carry")


def _over_blocks(size: int, block: int, body: Callable[..., Carry], carry: Carry) -> Carry:
  """Folds body(start, length, carry) over [0, size) in blocks: a loop, then the remainder."""
  n_full, tail = divmod(size, block)
  if n_full:
    carry = lax.fori_loop(0, n_full, lambda b, c: body(b * block, block, c), carry)
  return body(n_full * block, tail, carry) if tail else carry


def _logits(h_bh, w_hv, temperature: float) -> jax.Array:
  z = jnp.dot(h_bh, w_hv, precision=tiles.dot_precision(h_bh.dtype),
              preferred_element_type=jnp.float32)
  return z / temperature if temperature != 1.0 else z


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
  n, v = h_nh.shape[0], w_hv.shape[1]

  def token_block(r0, bn, outs):
    h = lax.dynamic_slice_in_dim(h_nh, r0, bn, 0)
    t = lax.dynamic_slice_in_dim(t_n, r0, bn)[:, None]

    def vocab_block(c0, bv, stats):
      z = _logits(h, lax.dynamic_slice_in_dim(w_hv, c0, bv, 1), temperature)
      return tiles.update_stats(stats, z, c0 + jnp.arange(bv)[None, :] == t)

    stats = _over_blocks(v, block_v, vocab_block, tiles.init_stats(bn))
    return tuple(
        lax.dynamic_update_slice_in_dim(out, x[:, 0], r0, 0)
        for out, x in zip(outs, tiles.finalize_stats(stats))
    )

  zeros = jnp.zeros((n,), jnp.float32)
  return _over_blocks(n, block_n, token_block, (zeros, zeros, zeros))


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
  (n, hdim), v = h_nh.shape, w_hv.shape[1]
  has_entropy = ent_n is not None
  per_token = [t_n, lse_n, g_logp_n] + ([ent_n, g_ent_n] if has_entropy else [])

  def vocab_block(c0, bv, carry):
    dh_nh, dw_hv = carry
    w = lax.dynamic_slice_in_dim(w_hv, c0, bv, 1)

    def token_block(r0, bn, inner):
      dh_nh, dw_acc = inner
      h = lax.dynamic_slice_in_dim(h_nh, r0, bn, 0)
      t, lse, g_logp, *rest = [lax.dynamic_slice_in_dim(x, r0, bn)[:, None] for x in per_token]
      ent, g_ent = rest if has_entropy else (None, None)
      z = _logits(h, w, temperature)
      dz = tiles.dlogits(z, c0 + jnp.arange(bv)[None, :] == t, lse, ent, g_logp, g_ent)
      dz = (dz / temperature if temperature != 1.0 else dz).astype(h_nh.dtype)
      precision = tiles.dot_precision(h_nh.dtype)
      dw_acc = dw_acc + lax.dot_general(h, dz, (((0,), (0,)), ((), ())), precision=precision,
                                        preferred_element_type=jnp.float32)
      dh_rows = lax.dynamic_slice_in_dim(dh_nh, r0, bn, 0) + lax.dot_general(
          dz, w, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=jnp.float32)
      return lax.dynamic_update_slice_in_dim(dh_nh, dh_rows, r0, 0), dw_acc

    dh_nh, dw_acc = _over_blocks(
        n, block_n, token_block, (dh_nh, jnp.zeros((hdim, bv), jnp.float32)))
    return dh_nh, lax.dynamic_update_slice_in_dim(dw_hv, dw_acc.astype(dw_hv.dtype), c0, 1)

  init = (jnp.zeros((n, hdim), jnp.float32), jnp.zeros_like(w_hv))
  dh_nh, dw_hv = _over_blocks(v, block_v, vocab_block, init)
  return dh_nh.astype(h_nh.dtype), dw_hv
