"""Reward-model losses against hand-computed values and analytic gradients."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosmojax import rm


def _softplus(x):
  return math.log1p(math.exp(x))


def test_bradley_terry_hand_computed_with_mask_and_margin():
  r_c, r_r = jnp.array([2.0, 0.0, 1.0]), jnp.array([0.0, 1.0, -5.0])
  mask = jnp.array([1, 1, 0])
  loss, m = rm.bradley_terry_loss(r_c, r_r, mask)
  # -log sigmoid(d) = softplus(-d); d = 2, -1 on the two real pairs.
  assert float(loss) == pytest.approx((_softplus(-2.0) + _softplus(1.0)) / 2, rel=1e-6)
  assert float(m["accuracy"]) == 0.5
  assert float(m["margin"]) == pytest.approx(0.5)
  assert float(m["chosen"]) == pytest.approx(1.0) and float(m["rejected"]) == pytest.approx(0.5)
  loss, m = rm.bradley_terry_loss(r_c, r_r, mask, jnp.array([1.0, 0.5, 0.0]))
  assert float(loss) == pytest.approx((_softplus(-1.0) + _softplus(1.5)) / 2, rel=1e-6)
  assert float(m["margin"]) == pytest.approx(0.5)  # the margin shifts the loss, not the metric


def test_bradley_terry_gradient_is_sigmoid_of_minus_gap():
  r_c, r_r = jnp.array([0.3, -1.2, 2.0]), jnp.array([0.1, 0.4, 0.0])
  mask, margin = jnp.array([1.0, 1.0, 0.0]), jnp.array([0.2, 0.0, 0.0])
  g_c, g_r = jax.grad(lambda a, b: rm.bradley_terry_loss(a, b, mask, margin)[0], (0, 1))(r_c, r_r)
  d = np.array([0.3 - 0.1 - 0.2, -1.2 - 0.4, 0.0])
  want = -1.0 / (1.0 + np.exp(d)) * np.array([1, 1, 0]) / 2  # -sigmoid(-d) / n on real pairs
  np.testing.assert_allclose(g_c, want, rtol=1e-6)
  np.testing.assert_allclose(g_r, -want, rtol=1e-6)


def test_ties_are_not_correct_and_empty_masks_give_zero():
  loss, m = rm.bradley_terry_loss(jnp.ones(2), jnp.ones(2), jnp.zeros(2))
  assert float(loss) == 0.0 and float(m["accuracy"]) == 0.0
  _, m = rm.bradley_terry_loss(jnp.ones(2), jnp.ones(2), jnp.ones(2))
  assert float(m["accuracy"]) == 0.0
  loss, _ = rm.pointwise_loss(jnp.ones(3), jnp.ones(3), jnp.zeros(3))
  assert float(loss) == 0.0


def test_pointwise_bce_hand_computed_and_gradient():
  logits = jnp.array([[2.0, -1.0], [0.5, 7.0]])
  labels = jnp.array([[1.0, 1.0], [0.0, 0.25]])
  mask = jnp.array([[1, 1], [1, 0]])
  loss, m = rm.pointwise_loss(logits, labels, mask)
  # -[y log s(r) + (1 - y) log s(-r)]: y=1 -> softplus(-r), y=0 -> softplus(r).
  want = (_softplus(-2.0) + _softplus(1.0) + _softplus(0.5)) / 3
  assert float(loss) == pytest.approx(want, rel=1e-6)
  assert float(m["accuracy"]) == pytest.approx(1 / 3)  # only r=2 (y=1) is on the right side
  assert float(m["reward"]) == pytest.approx((2.0 - 1.0 + 0.5) / 3)
  grad = jax.grad(lambda r: rm.pointwise_loss(r, labels, mask)[0])(logits)
  sig = 1.0 / (1.0 + np.exp(-np.asarray(logits)))
  np.testing.assert_allclose(grad, (sig - np.asarray(labels)) * np.asarray(mask) / 3, rtol=1e-6)
