"""Per-step sampling maths: temperature, top-k / top-p filtering, stop sequences.

Pure jnp functions over [N, V] logits, run inside the generation loop.

Filtering (`filter_logits`), for logits z:
  z' = z / temperature
  top-k: keep z'_v >= the k-th largest z'
  top-p: over the kept tokens sorted by decreasing z', p = softmax, keep token i iff the mass
         before it, sum_{j<i} p_j, is < top_p (the smallest prefix with mass >= top_p; the
         most likely token is always kept); then keep z'_v >= the last kept value
  dropped tokens get -inf, and the sampling distribution is softmax(filtered z').
Ties with the last kept value are kept, so the kept set can exceed k (or the top-p prefix)
when logits tie exactly. Suppressed ids (the engine's `suppressed_ids`: the image
placeholder of a multimodal model, which a completion must not contain because a full
forward would replace its embedding by an image's) get -inf before everything else.

Stop sequences are matched on device against the tail of each row: `push_tail` keeps the
last L generated tokens ([N, L], -1 before the first L tokens, never a token id), and
`ends_with_stop` compares it with a table [S, L] of the sequences right-aligned and padded on
the left with a wildcard. A stop *string* is given as the token sequence(s) it tokenizes to
(`cosmojax.rollout.stop_token_sequences`); text that spells the string with other tokens is
not caught on device, and the host decoder (`decode_completions`) still cuts the text there.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_WILDCARD = -2  # table entry that matches any tail entry (left padding of short sequences)
_NO_TOKEN = -1  # tail entry before a row has generated L tokens
_CDF_BLOCK = 128  # block of the two-level inverse CDF


def suppress(logits_nv: jax.Array, suppressed_ids: Sequence[int]) -> jax.Array:
  """float32 logits with the columns of `suppressed_ids` at -inf (never sampled).  # [..., V]"""
  z = logits_nv.astype(jnp.float32)
  if suppressed_ids:
    z = z.at[..., np.asarray(suppressed_ids, np.int32)].set(-jnp.inf)
  return z


def filter_logits(logits_nv: jax.Array, temperature: jax.Array, top_p: jax.Array, *,
                  top_k: int, use_top_p: bool, suppressed_ids: Sequence[int] = ()) -> jax.Array:
  """Tempered logits with the tokens outside the top-k / top-p set (and the suppressed
  ones) at -inf.  # [N, V] float32"""
  z = suppress(logits_nv, suppressed_ids) / temperature
  if top_k == 0 and not use_top_p:
    return z
  if top_k:
    k = min(top_k, z.shape[-1])
    sorted_nk = jax.lax.top_k(z, k)[0]  # decreasing
  else:
    sorted_nk = -jnp.sort(-z, axis=-1)
  threshold = sorted_nk[:, -1:]
  if use_top_p:
    p = jax.nn.softmax(sorted_nk, axis=-1)
    mass_before = jnp.cumsum(p, axis=-1) - p
    kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)  # >= 1
    threshold = jnp.take_along_axis(sorted_nk, kept - 1, axis=-1)
  return jnp.where(z >= threshold, z, -jnp.inf)


def _first_index(hit_nv: jax.Array) -> jax.Array:
  """Index of the first True of each row (V when none).  # [N] int32

  A min over iota instead of argmax, whose CPU lowering is several times slower."""
  v = hit_nv.shape[-1]
  return jnp.min(jnp.where(hit_nv, jnp.arange(v, dtype=jnp.int32), v), axis=-1)


def _last_index(hit_nv: jax.Array) -> jax.Array:
  """Index of the last True of each row (0 when none).  # [...] int32"""
  return jnp.max(jnp.where(hit_nv, jnp.arange(hit_nv.shape[-1], dtype=jnp.int32), 0), axis=-1)


def inverse_cdf(p_nv: jax.Array, u_n: jax.Array, block: int = _CDF_BLOCK) -> jax.Array:
  """The token i with P_{i-1} <= u * P_V < P_i (P the cumulative sum of the unnormalised
  probabilities p >= 0), i.e. a draw from p / sum(p) for u ~ U[0, 1).  # [N] int32

  Two levels, so that only [N, V / block] and [N, block] cumulative sums are taken: the
  block whose cumulative mass passes u * total, then the token inside it. Tokens of zero
  mass are never returned (rounding that overshoots the last positive token is clamped
  back to it).
  """
  n, v = p_nv.shape
  pad = -v % block
  p = jnp.pad(p_nv, ((0, 0), (0, pad))).reshape(n, -1, block)  # [N, nb, block]
  mass_nb = jnp.sum(p, axis=-1)
  cum_nb = jnp.cumsum(mass_nb, axis=-1)
  before_nb = jnp.concatenate([jnp.zeros((n, 1), cum_nb.dtype), cum_nb[:, :-1]], axis=-1)
  threshold = u_n * cum_nb[:, -1]
  j = jnp.minimum(jnp.sum(cum_nb <= threshold[:, None], axis=-1), _last_index(mass_nb > 0))
  rest = threshold - jnp.take_along_axis(before_nb, j[:, None], axis=-1)[:, 0]  # >= 0
  p_block = jnp.take_along_axis(p, j[:, None, None], axis=1)[:, 0]  # [N, block]
  within = jnp.minimum(jnp.sum(jnp.cumsum(p_block, axis=-1) <= rest[:, None], axis=-1),
                       _last_index(p_block > 0))
  return (j * block + within).astype(jnp.int32)


def sample_tokens(key: jax.Array, logits_nv: jax.Array, temperature: jax.Array,
                  top_p: jax.Array, *, greedy: bool, top_k: int, use_top_p: bool,
                  suppressed_ids: Sequence[int] = ()) -> tuple[jax.Array, jax.Array]:
  """One token per row and its log-probability under the distribution it was drawn from.

  Sampling is by inverse CDF with one uniform per row (`inverse_cdf`): N random numbers per
  step instead of the N * V Gumbel draws of `jax.random.categorical` (which dominated a
  CPU decode step). The log-probability is z_token - logsumexp(z) of the filtered z.

  Returns:
    (tokens [N] int32, logprobs [N] float32); greedy: the first argmax, and its
    log_softmax(logits) at temperature 1 with the suppressed ids excluded.
  """
  if greedy:
    z = suppress(logits_nv, suppressed_ids)
  else:
    z = filter_logits(logits_nv, temperature, top_p, top_k=top_k, use_top_p=use_top_p,
                      suppressed_ids=suppressed_ids)
  z_max = jnp.max(z, axis=-1, keepdims=True)
  if greedy:
    tokens = _first_index(z == z_max)
  else:
    u = jax.random.uniform(key, z.shape[:1], jnp.float32)
    tokens = inverse_cdf(jnp.exp(z - z_max), u)
  log_total = z_max[:, 0] + jnp.log(jnp.sum(jnp.exp(z - z_max), axis=-1))
  return tokens, jnp.take_along_axis(z, tokens[:, None], axis=-1)[:, 0] - log_total


def stop_table(stop_sequences: Sequence[Sequence[int]]) -> np.ndarray:
  """Stop sequences right-aligned in a table [S, L], left-padded with a wildcard (host)."""
  width = max((len(s) for s in stop_sequences), default=0)
  table = np.full((len(stop_sequences), width), _WILDCARD, np.int32)
  for i, seq in enumerate(stop_sequences):
    if min(seq, default=0) < 0:
      raise ValueError(f"stop sequence {i} {list(seq)} holds a negative token id.")
    table[i, width - len(seq):] = seq
  return table


def empty_tail(num_rows: int, width: int) -> jax.Array:
  """The tail of rows that have generated nothing yet.  # [N, L] int32"""
  return jnp.full((num_rows, width), _NO_TOKEN, jnp.int32)


def push_tail(tail_nl: jax.Array, tokens_n: jax.Array) -> jax.Array:
  """Shifts each row's tail left by one and appends its new token.  # [N, L]"""
  return jnp.concatenate([tail_nl[:, 1:], tokens_n[:, None].astype(tail_nl.dtype)], axis=1)


def ends_with_stop(tail_nl: jax.Array, table_sl: np.ndarray) -> jax.Array:
  """Whether each row's generated tokens end with one of the stop sequences.  # [N] bool"""
  table = jnp.asarray(table_sl)
  match = (table[None] == _WILDCARD) | (table[None] == tail_nl[:, None, :])  # [N, S, L]
  return jnp.any(jnp.all(match, axis=-1), axis=-1)
