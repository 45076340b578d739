"""Vector rewards: combining K named objectives into one signal, NaN-aware.

Rewards and advantages travel as matrices [..., K] over K named objectives. An objective that
does not apply to a sample (task-aware routing: a safety verifier on a maths problem) is NaN
there. Wherever objectives are combined, a missing objective is left out of that sample's
weighted sum and the remaining weights are rescaled so that they keep the total weight:

    c = (sum_k w_k v_k [v_k present]) * (sum_k w_k) / (sum_k w_k [v_k present])

With every objective present this is the plain weighted sum sum_k w_k v_k. A sample with no
present objective of nonzero weight gets c = 0 and is flagged as having no objective.
Weights are expected to be nonnegative with a positive sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def combine_objectives(values_xk: jax.Array, weights_k: jax.Array) -> tuple[jax.Array, jax.Array]:
  """NaN-aware weighted sum over the last axis (see the module docstring).

    c_x = (sum_k w_k v_xk [v_xk present]) * W / W_x,  W = sum_k w_k,
    W_x = sum_k w_k [v_xk present];  c_x = 0 where W_x = 0.

  Args:
    values_xk: values per objective, NaN where the objective does not apply.  # [..., K]
    weights_k: objective weights.  # [K]

  Returns:
    (combined_x, has_objective_x): the combined value (never NaN) and whether any objective
    of nonzero weight was present.  # [...], [...]
  """
  if weights_k.ndim != 1 or values_xk.shape[-1] != weights_k.shape[0]:
    raise ValueError(
        f"combine_objectives: values have {values_xk.shape[-1]} objectives on their last axis "
        f"(shape {values_xk.shape}) but weights_k has shape {weights_k.shape}."
    )
  values = values_xk.astype(jnp.float32)
  weights = weights_k.astype(jnp.float32)
  present = ~jnp.isnan(values)
  present_weight = jnp.where(present, weights, 0.0)
  weight_present = jnp.sum(present_weight, axis=-1)
  has_objective = weight_present > 0
  weighted_sum = jnp.sum(present_weight * jnp.where(present, values, 0.0), axis=-1)
  scale = jnp.sum(weights) / jnp.where(has_objective, weight_present, 1.0)
  combined = jnp.where(has_objective, weighted_sum * scale, 0.0)
  return combined, has_objective
