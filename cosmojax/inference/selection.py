"""Pure maths of step-level search: aggregation of step scores and batched top-k selection.

A partial response with steps 1..n carries the verifier's step scores s_1..s_n (the score of
the partial response ending at step i). Its aggregate score is

    sum:   A = sum_i s_i
    mean:  A = (1/n) sum_i s_i
    last:  A = s_n              (the verifier reads the whole prefix: a value model's V)
    min:   A = min_i s_i        (a process verifier's weakest step)

and 0 for a response without steps. Selection keeps, per example, the k valid candidates of
highest aggregate score (ties: the lower candidate index first, as `jax.lax.top_k` orders
them). Both run over static, padded shapes [examples, candidates, steps] with masks, so a
search compiles each once per configuration.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

AGGREGATIONS = ("sum", "mean", "last", "min")


@functools.partial(jax.jit, static_argnames="mode")
def aggregate_step_scores(step_scores: jax.Array, step_mask: jax.Array, mode: str) -> jax.Array:
  """The aggregate score A of each candidate (module docstring).  # [...]

  Args:
    step_scores: [..., S] float step scores s_i, steps left-aligned.
    step_mask: [..., S] bool, True on the candidate's n steps (a prefix of the S slots).
    mode: one of `AGGREGATIONS`.
  """
  if mode not in AGGREGATIONS:
    raise ValueError(f"unknown step-score aggregation {mode!r}; known: {AGGREGATIONS}")
  s = step_scores.astype(jnp.float32)
  m = step_mask.astype(bool)
  n = jnp.sum(m, axis=-1)
  if mode in ("sum", "mean"):
    total = jnp.sum(jnp.where(m, s, 0.0), axis=-1)
    return total if mode == "sum" else total / jnp.maximum(n, 1)
  if mode == "last":
    last = jnp.take_along_axis(s, jnp.maximum(n - 1, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(n > 0, last, 0.0)
  lowest = jnp.min(jnp.where(m, s, jnp.inf), axis=-1)
  return jnp.where(n > 0, lowest, 0.0)


@functools.partial(jax.jit, static_argnames="k")
def top_k_valid(scores_ec: jax.Array, valid_ec: jax.Array, k: int
                ) -> tuple[jax.Array, jax.Array]:
  """The k best valid candidates of each row, best first.

  Args:
    scores_ec: [E, C] float candidate scores.
    valid_ec: [E, C] bool, False on padding (and on candidates that must not be kept).
    k: how many to keep (<= C).

  Returns:
    (index [E, k] int32 candidate indices, kept [E, k] bool). `kept` is False where a row has
    fewer than k valid candidates; those indices point at invalid entries.
  """
  masked = jnp.where(valid_ec, scores_ec.astype(jnp.float32), -jnp.inf)
  _, index = jax.lax.top_k(masked, k)
  kept = jnp.take_along_axis(valid_ec.astype(bool), index, axis=-1)
  return index.astype(jnp.int32), kept
