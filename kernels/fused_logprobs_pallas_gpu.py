"""Pallas Triton (GPU) kernels of the fused token log-probs.

Triton keeps one tile in registers, so no kernel holds a whole hidden row: the contraction
over the hidden dimension runs in chunks of `block_h`, with masked loads at every edge
(sizes need not be multiples of the blocks, nor powers of two; the tiles are).

- forward, grid (token blocks,): loops over vocabulary blocks, each tile's logits built by
  a loop over hidden chunks, folded into the online log-sum-exp (`logprob_tiles`).
- dh, grid (token blocks,): recomputes each tile, turns it into d logits, and adds
  d logits @ W^T chunk by chunk into its own rows of a float32 dh (read-modify-write, no
  atomics: one program owns a row block).
- dW, grid (vocabulary blocks,): the same over token blocks, adding h^T @ d logits into its
  own columns of a float32 dW.

Memory: no [N, V] array; the float32 dh [N, H] and dW [H, V] accumulators are the largest
temporaries (cast to the input dtypes at the end).
"""

from __future__ import annotations

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp

from kernels import logprob_tiles as tiles


def _logits_tile(h_ref, w_ref, rows, row_ok, cols, col_ok, *, hdim, bh, temperature):
  """[rows, cols] float32 z = h W / T, invalid columns set to MASK_VALUE.

  Args:
    h_ref: ref whose slice `rows` (a pl.ds or slice(None)) holds the tile's hidden rows.
    w_ref: ref whose slice `cols` holds the tile's LM-head columns.
    row_ok, col_ok: [rows] and [cols] bool validity of the tile's rows and columns.
  """

  def chunk(k, acc):
    ks = k * bh + jnp.arange(bh)
    k_ok = ks < hdim
    h = plgpu.load(
        h_ref.at[rows, pl.ds(k * bh, bh)], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
    w = plgpu.load(
        w_ref.at[pl.ds(k * bh, bh), cols], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
    return acc + jnp.dot(h, w, preferred_element_type=jnp.float32)

  acc = jnp.zeros((row_ok.shape[0], col_ok.shape[0]), jnp.float32)
  z = lax.fori_loop(0, pl.cdiv(hdim, bh), chunk, acc)
  if temperature != 1.0:
    z = z / temperature
  return jnp.where(col_ok[None, :], z, tiles.MASK_VALUE)


def _forward_kernel(h_ref, w_ref, t_ref, logp_ref, lse_ref, ent_ref, *, n, v, hdim, bn, bv,
                    bh, temperature):
  row_ok = pl.program_id(0) * bn + jnp.arange(bn) < n
  t = plgpu.load(t_ref, mask=row_ok[:, None], other=0)

  def vocab_block(j, stats):
    cols = j * bv + jnp.arange(bv)
    col_ok = cols < v
    z = _logits_tile(h_ref, w_ref, slice(None), row_ok, pl.ds(j * bv, bv), col_ok,
                     hdim=hdim, bh=bh, temperature=temperature)
    return tiles.update_stats(stats, z, cols[None, :] == t)

  stats = lax.fori_loop(0, pl.cdiv(v, bv), vocab_block, tiles.init_stats(bn))
  for ref, x in zip((logp_ref, lse_ref, ent_ref), tiles.finalize_stats(stats)):
    plgpu.store(ref, x, mask=row_ok[:, None])


def _load_token_values(refs, rows, row_ok):
  """Loads the [bn, 1] per-token values (see `backward`) of a row block; 0 past the end."""
  return [plgpu.load(r.at[rows, :], mask=row_ok[:, None], other=jnp.zeros((), r.dtype))
          for r in refs]


def _tile_cotangent(z, cols, row_ok, values, temperature):
  """d loss / d (h W) of one tile; zero on invalid rows."""
  t, lse, g_logp, ent, g_ent = values
  dz = tiles.dlogits(z, cols[None, :] == t, lse, ent, g_logp, g_ent)
  dz = jnp.where(row_ok[:, None], dz, 0.0)
  return dz / temperature if temperature != 1.0 else dz


def _dh_kernel(h_ref, w_ref, *refs, n, v, hdim, bn, bv, bh, temperature, has_entropy):
  *token_refs, dh_ref = refs
  row_ok = pl.program_id(0) * bn + jnp.arange(bn) < n
  values = _load_token_values(token_refs, slice(None), row_ok)
  values = values if has_entropy else values + [None, None]
  n_chunks = pl.cdiv(hdim, bh)

  def chunk_mask(k):
    return row_ok[:, None] & (k * bh + jnp.arange(bh) < hdim)[None, :]

  @pl.loop(0, n_chunks)
  def _(k):
    plgpu.store(dh_ref.at[:, pl.ds(k * bh, bh)], jnp.zeros((bn, bh), jnp.float32),
                mask=chunk_mask(k))

  @pl.loop(0, pl.cdiv(v, bv))
  def _(j):
    cols = j * bv + jnp.arange(bv)
    col_ok = cols < v
    z = _logits_tile(h_ref, w_ref, slice(None), row_ok, pl.ds(j * bv, bv), col_ok,
                     hdim=hdim, bh=bh, temperature=temperature)
    dz = _tile_cotangent(z, cols, row_ok, values, temperature).astype(w_ref.dtype)

    @pl.loop(0, n_chunks)
    def _(k):
      k_ok = k * bh + jnp.arange(bh) < hdim
      w = plgpu.load(w_ref.at[pl.ds(k * bh, bh), pl.ds(j * bv, bv)],
                     mask=k_ok[:, None] & col_ok[None, :], other=0.0)
      contrib = lax.dot_general(dz, w, (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32)
      target = dh_ref.at[:, pl.ds(k * bh, bh)]
      acc = plgpu.load(target, mask=chunk_mask(k), other=0.0)
      plgpu.store(target, acc + contrib, mask=chunk_mask(k))


def _dw_kernel(h_ref, w_ref, *refs, n, v, hdim, bn, bv, bh, temperature, has_entropy):
  *token_refs, dw_ref = refs
  cols = pl.program_id(0) * bv + jnp.arange(bv)
  col_ok = cols < v
  n_chunks = pl.cdiv(hdim, bh)

  def chunk_mask(k):
    return (k * bh + jnp.arange(bh) < hdim)[:, None] & col_ok[None, :]

  @pl.loop(0, n_chunks)
  def _(k):
    plgpu.store(dw_ref.at[pl.ds(k * bh, bh), :], jnp.zeros((bh, bv), jnp.float32),
                mask=chunk_mask(k))

  @pl.loop(0, pl.cdiv(n, bn))
  def _(i):
    rows = pl.ds(i * bn, bn)
    row_ok = i * bn + jnp.arange(bn) < n
    values = _load_token_values(token_refs, rows, row_ok)
    values = values if has_entropy else values + [None, None]
    z = _logits_tile(h_ref, w_ref, rows, row_ok, slice(None), col_ok,
                     hdim=hdim, bh=bh, temperature=temperature)
    dz = _tile_cotangent(z, cols, row_ok, values, temperature).astype(h_ref.dtype)

    @pl.loop(0, n_chunks)
    def _(k):
      k_ok = k * bh + jnp.arange(bh) < hdim
      h = plgpu.load(h_ref.at[rows, pl.ds(k * bh, bh)],
                     mask=row_ok[:, None] & k_ok[None, :], other=0.0)
      contrib = lax.dot_general(h, dz, (((0,), (0,)), ((), ())),
                                preferred_element_type=jnp.float32)
      target = dw_ref.at[pl.ds(k * bh, bh), :]
      acc = plgpu.load(target, mask=chunk_mask(k), other=0.0)
      plgpu.store(target, acc + contrib, mask=chunk_mask(k))


def _sizes(h_nh, w_hv, block_sizes, backward: bool) -> dict[str, int]:
  n, hdim = h_nh.shape
  bn, bv = block_sizes.backward_blocks() if backward else block_sizes.forward_blocks()
  return dict(n=n, v=w_hv.shape[1], hdim=hdim, bn=bn, bv=bv, bh=block_sizes.block_h)


def _params(block_sizes):
  return plgpu.CompilerParams(num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages)


def forward(h_nh, w_hv, t_n1, *, temperature, block_sizes, interpret):
  """Returns (log p(target), lse, entropy), each [tokens, 1] float32.

  Args:
    h_nh: [tokens, hidden]; w_hv: [hidden, vocab]; t_n1: [tokens, 1] int32 targets.
  """
  s = _sizes(h_nh, w_hv, block_sizes, backward=False)
  n, hdim, bn = s["n"], s["hdim"], s["bn"]
  token_vec = pl.BlockSpec((bn, 1), lambda i: (i, 0))
  out = jax.ShapeDtypeStruct((n, 1), jnp.float32)
  return pl.pallas_call(
      functools.partial(_forward_kernel, temperature=temperature, **s),
      grid=(pl.cdiv(n, bn),),
      in_specs=[pl.BlockSpec((bn, hdim), lambda i: (i, 0)),
                pl.BlockSpec(w_hv.shape, lambda i: (0, 0)), token_vec],
      out_specs=[token_vec] * 3,
      out_shape=[out] * 3,
      compiler_params=_params(block_sizes),
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
  s = _sizes(h_nh, w_hv, block_sizes, backward=True)
  n, v, hdim, bn, bv = s["n"], s["v"], s["hdim"], s["bn"], s["bv"]
  kw = dict(temperature=temperature, has_entropy=len(token_values) == 5, **s)
  dh = pl.pallas_call(
      functools.partial(_dh_kernel, **kw),
      grid=(pl.cdiv(n, bn),),
      in_specs=[pl.BlockSpec((bn, hdim), lambda i: (i, 0)),
                pl.BlockSpec(w_hv.shape, lambda i: (0, 0))]
      + [pl.BlockSpec((bn, 1), lambda i: (i, 0))] * len(token_values),
      out_specs=pl.BlockSpec((bn, hdim), lambda i: (i, 0)),
      out_shape=jax.ShapeDtypeStruct((n, hdim), jnp.float32),
      compiler_params=_params(block_sizes),
      interpret=interpret,
      name="fused_logprobs_bwd_dh",
  )(h_nh, w_hv, *token_values)
  dw = pl.pallas_call(
      functools.partial(_dw_kernel, **kw),
      grid=(pl.cdiv(v, bv),),
      in_specs=[pl.BlockSpec(h_nh.shape, lambda j: (0, 0)),
                pl.BlockSpec((hdim, bv), lambda j: (0, j))]
      + [pl.BlockSpec((n, 1), lambda j: (0, 0))] * len(token_values),
      out_specs=pl.BlockSpec((hdim, bv), lambda j: (0, j)),
      out_shape=jax.ShapeDtypeStruct((hdim, v), jnp.float32),
      compiler_params=_params(block_sizes),
      interpret=interpret,
      name="fused_logprobs_bwd_dw",
  )(h_nh, w_hv, *token_values)
  return dh.astype(h_nh.dtype), dw.astype(w_hv.dtype)
