"""Reward-model losses: pairwise Bradley-Terry and pointwise binary cross-entropy, masked.

Each returns (loss, metrics), pure and jittable; masked-out entries contribute nothing, and a
batch with nothing in its mask gives loss 0 (the denominators are max(sum mask, 1)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  m = mask.astype(jnp.float32)
  return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def bradley_terry_loss(r_chosen_b: jax.Array, r_rejected_b: jax.Array, mask_b: jax.Array,
                       margin_b: jax.Array | None = None
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Pairwise Bradley-Terry loss with an optional margin.

      loss = sum_b m_b * -log sigmoid(r_c[b] - r_r[b] - mu_b) / max(sum_b m_b, 1)

  (mu = 0 without a margin: Llama-2's margin loss otherwise). Metrics over the masked pairs:
  `accuracy` = mean [r_c > r_r] (ties count as wrong), `margin` = mean (r_c - r_r),
  `chosen` / `rejected` = mean rewards.

  Args:
    r_chosen_b: [batch] rewards of the preferred responses.
    r_rejected_b: [batch] rewards of the other responses.
    mask_b: [batch] 1 on real pairs, 0 on padding.
    margin_b: [batch] required reward gap mu, or None.
  """
  diff_b = (r_chosen_b - r_rejected_b).astype(jnp.float32)
  shifted = diff_b if margin_b is None else diff_b - margin_b.astype(jnp.float32)
  loss = _masked_mean(-jax.nn.log_sigmoid(shifted), mask_b)
  metrics = {
      "loss": loss,
      "accuracy": _masked_mean((diff_b > 0).astype(jnp.float32), mask_b),
      "margin": _masked_mean(diff_b, mask_b),
      "chosen": _masked_mean(r_chosen_b.astype(jnp.float32), mask_b),
      "rejected": _masked_mean(r_rejected_b.astype(jnp.float32), mask_b),
  }
  return loss, metrics


def pointwise_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Binary cross-entropy on reward logits, elementwise over any shape, masked mean.

      loss = sum m * [softplus(r) - y r] / max(sum m, 1)
           = sum m * -[y log sigmoid(r) + (1 - y) log sigmoid(-r)] / max(sum m, 1)

  Labels y lie in [0, 1] (1: good). Metrics over the masked entries: `accuracy` =
  mean [(r > 0) == (y > 0.5)], `reward` = mean r.

  Args:
    logits: [...] reward logits r.
    labels: [...] targets y, same shape.
    mask: [...] 1 where the entry counts.
  """
  r = logits.astype(jnp.float32)
  y = labels.astype(jnp.float32)
  loss = _masked_mean(jax.nn.softplus(r) - y * r, mask)
  correct = ((r > 0) == (y > 0.5)).astype(jnp.float32)
  return loss, {"loss": loss, "accuracy": _masked_mean(correct, mask),
                "reward": _masked_mean(r, mask)}
