"""Tile maths of the fused log-prob kernels, shared by the XLA, Triton and Mosaic backends.

One tile is `z = (h @ W) / T` for a block of rows (tokens) and columns (vocabulary entries),
in float32, with columns outside the vocabulary (or already seen) set to `MASK_VALUE`.

Forward, an online log-sum-exp over the column blocks of a row keeps four statistics
per row, all `[rows, 1]`:

    m   running maximum of z
    s   sum_j exp(z_j - m)
    su  sum_j exp(z_j - m) (z_j - m)
    zt  z at the target column

from which lse = m + log s, log p(target) = zt - lse and the entropy
H = -sum_j p_j log p_j = lse - E_p[z] = log s - su / s. Tracking `su` relative to the
running maximum avoids the cancellation of lse - E_p[z] when logits are large.

Backward, with upstream cotangents g_logp and g_ent per row, the cotangent of the tile is

    dz_j = g_logp (1[j = target] - p_j) - g_ent p_j (log p_j + H),   p_j = exp(z_j - lse)

(dH/dz_j = -p_j (log p_j + H)); the caller divides by T and contracts with W or h.
Every function here is elementwise or a row reduction, so it lowers on all backends.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp

# Finite rather than -inf: exp() still underflows to exactly 0, and 0 * MASK_VALUE stays 0
# (with -inf it would be NaN), so masked columns drop out of every sum.
MASK_VALUE = -1e30

Stats = tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def dot_precision(dtype) -> lax.Precision | None:
  """Matmul precision for operands of `dtype`: HIGHEST for float32 (by default TPUs round
  float32 operands to bfloat16 and GPUs to TF32; the reference keeps float32), the default
  otherwise (bfloat16 products are exact in the float32 accumulator)."""
  return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def init_stats(rows: int) -> Stats:
  """Statistics of an empty row set: (m, s, su, zt), each [rows, 1] float32."""
  zeros = jnp.zeros((rows, 1), jnp.float32)
  return jnp.full((rows, 1), MASK_VALUE, jnp.float32), zeros, zeros, zeros


def update_stats(stats: Stats, z: jax.Array, is_target: jax.Array) -> Stats:
  """Folds one tile into the running statistics.

  Args:
    stats: (m, s, su, zt), each [rows, 1] float32.
    z: [rows, cols] float32 scaled logits, invalid columns set to MASK_VALUE.
    is_target: [rows, cols] bool, true at the (valid) target column of each row.

  Returns:
    The updated statistics.
  """
  m, s, su, zt = stats
  m_new = jnp.maximum(m, jnp.max(z, axis=-1, keepdims=True))
  alpha = jnp.exp(m - m_new)
  u = z - m_new
  e = jnp.exp(u)
  s_new = alpha * s + jnp.sum(e, axis=-1, keepdims=True)
  # sum e_old (u_old - d) rescaled by alpha, with d = m_new - m the shift of the maximum.
  su_new = alpha * (su - (m_new - m) * s) + jnp.sum(e * u, axis=-1, keepdims=True)
  zt_new = zt + jnp.sum(jnp.where(is_target, z, 0.0), axis=-1, keepdims=True)
  return m_new, s_new, su_new, zt_new


def finalize_stats(stats: Stats) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns (log p(target), lse, entropy), each [rows, 1] float32."""
  m, s, su, zt = stats
  log_s = jnp.log(s)
  lse = m + log_s
  return zt - lse, lse, log_s - su / s


def dlogits(
    z: jax.Array,
    is_target: jax.Array,
    lse: jax.Array,
    entropy: jax.Array | None,
    g_logp: jax.Array,
    g_ent: jax.Array | None,
) -> jax.Array:
  """Cotangent of a tile of scaled logits z (see the module docstring).

  Args:
    z: [rows, cols] float32, invalid columns set to MASK_VALUE (their cotangent is 0).
    is_target: [rows, cols] bool.
    lse, entropy, g_logp, g_ent: [rows, 1] float32; entropy and g_ent are None when the
      entropy is not an output.

  Returns:
    [rows, cols] float32 d loss / d z.
  """
  log_p = z - lse
  p = jnp.exp(log_p)
  dz = jnp.where(is_target, g_logp, 0.0) - p * g_logp
  if g_ent is not None:
    dz = dz - g_ent * p * (log_p + entropy)
  return dz
