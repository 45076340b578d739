"""Pallas Mosaic (TPU) kernels of the fused token log-probs.

TPU VMEM holds whole hidden rows, so each tile contracts the full hidden dimension in one
MXU matmul: blocks are [block_n, H] of hidden states and [H, block_v] of the LM head, and
the grid's last dimension is a reduction ("arbitrary") whose accumulators live in VMEM
scratch, as in flash attention:

- forward, grid (token blocks, vocabulary blocks): online log-sum-exp statistics per row.
- dh, grid (token blocks, vocabulary blocks): float32 [block_n, H] accumulator of
  d logits @ W^T.
- dW, grid (vocabulary blocks, token blocks): float32 [H, block_v] accumulator of
  h^T @ d logits.

Partial edge blocks read unspecified values past the array's end: columns past the
vocabulary are masked out of the logits and the LM head, rows past the tokens out of the
hidden states and the cotangents, and their outputs are dropped on write. HBM temporaries:
none beyond the per-token vectors.
Block sizes: block_n a multiple of 8 (16 for bfloat16), block_v of 128.
"""

from __future__ import annotations

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp

from kernels import logprob_tiles as tiles

_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


def _tile(h, w, t, col0, v, temperature):
  """Logits tile z [bn, bv] (columns past the vocabulary masked) and the target indicator."""
  z = jnp.dot(h, w, precision=tiles.dot_precision(h.dtype), preferred_element_type=jnp.float32)
  if temperature != 1.0:
    z = z / temperature
  cols = col0 + lax.broadcasted_iota(jnp.int32, z.shape, 1)
  col_ok = cols < v
  return jnp.where(col_ok, z, tiles.MASK_VALUE), (cols == t) & col_ok


def _forward_kernel(h_ref, w_ref, t_ref, logp_ref, lse_ref, ent_ref, *stat_refs, v, bv,
                    temperature):
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _():
    for ref, x in zip(stat_refs, tiles.init_stats(stat_refs[0].shape[0])):
      ref[...] = x

  z, is_target = _tile(h_ref[...], w_ref[...], t_ref[...], j * bv, v, temperature)
  stats = tiles.update_stats(tuple(r[...] for r in stat_refs), z, is_target)
  for ref, x in zip(stat_refs, stats):
    ref[...] = x

  @pl.when(j == pl.num_programs(1) - 1)
  def _():
    for ref, x in zip((logp_ref, lse_ref, ent_ref), tiles.finalize_stats(stats)):
      ref[...] = x


def _cotangent(h_ref, w_ref, token_refs, col0, v, temperature):
  """d loss / d (h W) of one tile [bn, bv], with the column validity [1, bv]."""
  t, lse, g_logp, *ent_terms = (r[...] for r in token_refs)
  ent, g_ent = ent_terms if ent_terms else (None, None)
  w = w_ref[...]
  col_ok = col0 + lax.broadcasted_iota(jnp.int32, (1, w.shape[1]), 1) < v
  w = jnp.where(col_ok, w, jnp.zeros_like(w))
  z, is_target = _tile(h_ref[...], w, t, col0, v, temperature)
  dz = tiles.dlogits(z, is_target, lse, ent, g_logp, g_ent)
  return dz / temperature if temperature != 1.0 else dz, w


def _dh_kernel(h_ref, w_ref, *refs, v, bv, temperature):
  *token_refs, dh_ref, acc_ref = refs
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  dz, w = _cotangent(h_ref, w_ref, token_refs, j * bv, v, temperature)
  acc_ref[...] += lax.dot_general(dz.astype(w.dtype), w, _NT,
                                  precision=tiles.dot_precision(w.dtype),
                                  preferred_element_type=jnp.float32)

  @pl.when(j == pl.num_programs(1) - 1)
  def _():
    dh_ref[...] = acc_ref[...].astype(dh_ref.dtype)


def _dw_kernel(h_ref, w_ref, *refs, n, bn, v, bv, temperature):
  *token_refs, dw_ref, acc_ref = refs
  j, i = pl.program_id(0), pl.program_id(1)

  @pl.when(i == 0)
  def _():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  dz, _ = _cotangent(h_ref, w_ref, token_refs, j * bv, v, temperature)
  row_ok = i * bn + lax.broadcasted_iota(jnp.int32, (bn, 1), 0) < n
  dz = jnp.where(row_ok, dz, 0.0)
  h = h_ref[...]
  h = jnp.where(row_ok, h, jnp.zeros_like(h))
  acc_ref[...] += lax.dot_general(h, dz.astype(h.dtype), _TN,
                                  precision=tiles.dot_precision(h.dtype),
                                  preferred_element_type=jnp.float32)

  @pl.when(i == pl.num_programs(1) - 1)
  def _():
    dw_ref[...] = acc_ref[...].astype(dw_ref.dtype)


def _params(block_sizes, grid_semantics):
  return pltpu.CompilerParams(dimension_semantics=grid_semantics,
                              vmem_limit_bytes=block_sizes.vmem_limit_bytes)


def forward(h_nh, w_hv, t_n1, *, temperature, block_sizes, interpret):
  """Returns (log p(target), lse, entropy), each [tokens, 1] float32.

  Args:
    h_nh: [tokens, hidden]; w_hv: [hidden, vocab]; t_n1: [tokens, 1] int32 targets.
  """
  (n, hdim), v = h_nh.shape, w_hv.shape[1]
  bn, bv = block_sizes.forward_blocks()
  token_vec = pl.BlockSpec((bn, 1), lambda i, j: (i, 0))
  out = jax.ShapeDtypeStruct((n, 1), jnp.float32)
  return pl.pallas_call(
      functools.partial(_forward_kernel, v=v, bv=bv, temperature=temperature),
      grid=(pl.cdiv(n, bn), pl.cdiv(v, bv)),
      in_specs=[pl.BlockSpec((bn, hdim), lambda i, j: (i, 0)),
                pl.BlockSpec((hdim, bv), lambda i, j: (0, j)), token_vec],
      out_specs=[token_vec] * 3,
      out_shape=[out] * 3,
      scratch_shapes=[pltpu.VMEM((bn, 1), jnp.float32)] * 4,
      compiler_params=_params(block_sizes, ("parallel", "arbitrary")),
      interpret=interpret,
      name="fused_logprobs_fwd",
  )(h_nh, w_hv, t_n1)


def backward(h_nh, w_hv, token_values, *, temperature, block_sizes, interpret):
  """Returns (d hidden, d lm_head) in the input dtypes.

  Args:
    h_nh: [tokens, hidden]; w_hv: [hidden, vocab].
    token_values: [tokens, 1] arrays (targets, lse, g_logp) or, with the entropy term,
      (targets, lse, g_logp, entropy, g_entropy).
  """
  (n, hdim), v = h_nh.shape, w_hv.shape[1]
  bn, bv = block_sizes.backward_blocks()
  nb_n, nb_v = pl.cdiv(n, bn), pl.cdiv(v, bv)
  dh = pl.pallas_call(
      functools.partial(_dh_kernel, v=v, bv=bv, temperature=temperature),
      grid=(nb_n, nb_v),
      in_specs=[pl.BlockSpec((bn, hdim), lambda i, j: (i, 0)),
                pl.BlockSpec((hdim, bv), lambda i, j: (0, j))]
      + [pl.BlockSpec((bn, 1), lambda i, j: (i, 0))] * len(token_values),
      out_specs=pl.BlockSpec((bn, hdim), lambda i, j: (i, 0)),
      out_shape=jax.ShapeDtypeStruct((n, hdim), h_nh.dtype),
      scratch_shapes=[pltpu.VMEM((bn, hdim), jnp.float32)],
      compiler_params=_params(block_sizes, ("parallel", "arbitrary")),
      interpret=interpret,
      name="fused_logprobs_bwd_dh",
  )(h_nh, w_hv, *token_values)
  dw = pl.pallas_call(
      functools.partial(_dw_kernel, n=n, bn=bn, v=v, bv=bv, temperature=temperature),
      grid=(nb_v, nb_n),
      in_specs=[pl.BlockSpec((bn, hdim), lambda j, i: (i, 0)),
                pl.BlockSpec((hdim, bv), lambda j, i: (0, j))]
      + [pl.BlockSpec((bn, 1), lambda j, i: (i, 0))] * len(token_values),
      out_specs=pl.BlockSpec((hdim, bv), lambda j, i: (0, j)),
      out_shape=jax.ShapeDtypeStruct((hdim, v), w_hv.dtype),
      scratch_shapes=[pltpu.VMEM((hdim, bv), jnp.float32)],
      compiler_params=_params(block_sizes, ("parallel", "arbitrary")),
      interpret=interpret,
      name="fused_logprobs_bwd_dw",
  )(h_nh, w_hv, *token_values)
  return dh, dw
