"""Vector rewards: combining K named objectives into one signal, NaN-aware.

Rewards and advantages travel as matrices [..., K] over K named objectives. An objective that
does not apply to a sample (task-aware routing: a safety verifier on a maths problem) is NaN
there. Wherever objectives are combined, a missing objective is left out of that sample's
weighted sum and the remaining weights are rescaled so that they keep the total weight:

    c = (sum_k w_k v_k [v_k present]) * (sum_k w_k) / (sum_k w_k [v_k present])

With every objective present this is the plain weighted sum sum_k w_k v_k. A sample with no
present objective of nonzero weight gets c = 0 and is flagged as having no objective.
Weights are expected to be nonnegative. They are either shared, w_k [K], or per sample,
w_nk [N, K] (reward recipes give each task its own weights: 0 where an objective is not
routed to the sample's task), in which case W = sum_k w_nk is each sample's own total.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _broadcast_weights(values_xk: jax.Array, weights: jax.Array) -> jax.Array:
  """Weights [K] or [N, K] (N = values' leading axis) shaped to broadcast against values."""
  k = values_xk.shape[-1]
  if weights.shape == (k,):
    return weights
  if weights.ndim == 2 and weights.shape == (values_xk.shape[0], k):
    return weights.reshape(weights.shape[:1] + (1,) * (values_xk.ndim - 2) + (k,))
  raise ValueError(
      f"combine_objectives: values have shape {values_xk.shape} ({k} objectives on the last "
      f"axis) but the weights have shape {weights.shape}; expected ({k},) or "
      f"({values_xk.shape[0]}, {k})."
  )


@jax.jit
def combine_objectives(values_xk: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """NaN-aware weighted sum over the last axis (see the module docstring).

    c_x = (sum_k w_k v_xk [v_xk present]) * W / W_x,  W = sum_k w_k,
    W_x = sum_k w_k [v_xk present];  c_x = 0 where W_x = 0.

  Args:
    values_xk: values per objective, NaN where the objective does not apply.  # [N, ..., K]
    weights: objective weights, shared [K] or per sample [N, K].

  Returns:
    (combined_x, has_objective_x): the combined value (never NaN) and whether any objective
    of nonzero weight was present.  # [N, ...], [N, ...]
  """
  values = values_xk.astype(jnp.float32)
  weights = _broadcast_weights(values_xk, weights.astype(jnp.float32))
  present = ~jnp.isnan(values)
  present_weight = jnp.where(present, weights, 0.0)
  weight_present = jnp.sum(present_weight, axis=-1)
  has_objective = weight_present > 0
  weighted_sum = jnp.sum(present_weight * jnp.where(present, values, 0.0), axis=-1)
  scale = jnp.sum(weights, axis=-1) / jnp.where(has_objective, weight_present, 1.0)
  combined = jnp.where(has_objective, weighted_sum * scale, 0.0)
  return combined, has_objective
