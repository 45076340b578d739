"""Policy losses against hand-computed cases and independent gradient references.

Expected values are derived in the comments from the equations of cosmojax/rl/losses.py (or
from ARCHITECTURE.md's objective maths); gradients are checked against explicit formulas
(-A grad log pi, grad KL on a small categorical, sequence-level GSPO written out here).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosmojax.rl import (
    POLICY_LOSSES,
    PolicyLossConfig,
    aggregate,
    kl_penalty,
    multiobjective_pg_loss_reference,
    policy_loss_from_logprobs,
    token_logprobs_reference,
)

LN_HALF = math.log(0.5)
ONE = jnp.array([1.0])


def _loss_and_grad(logp, old, adv, weights, mask, config, **kwargs):
  """Loss, diagnostics and d loss / d logp."""
  fn = lambda l: policy_loss_from_logprobs(l, old, adv, weights, mask, config, **kwargs)
  (loss, diag), grad = jax.value_and_grad(fn, has_aux=True)(logp)
  return float(loss), diag, np.asarray(grad)


def _from_ratios(ratios):
  """logp with log pi_old = ln 0.5 and the given ratios pi / pi_old."""
  ratios = np.asarray(ratios, np.float32)
  return jnp.asarray(LN_HALF + np.log(ratios)), jnp.full(ratios.shape, LN_HALF)


def test_cpgd_hand_computed():
  # Sequence 0 has A = +1, sequence 1 has A = -1; eps = 0.2: band [ln 0.8, ln 1.2].
  logp, old = _from_ratios([[1.0, 1.3, 0.7, 1.1], [1.0, 1.3, 0.7, 0.9]])
  config = PolicyLossConfig(loss_type="cpgd", drift_coef=0.0)
  loss, diag, grad = _loss_and_grad(logp, old, jnp.array([[1.0], [-1.0]]), ONE,
                                    jnp.ones((2, 4)), config)
  l = np.asarray(logp)
  # A > 0: min(l, l0 + ln 1.2) clips only the 1.3 token; A < 0: max(l, l0 + ln 0.8) clips 0.7.
  clipped = np.array([
      [l[0, 0], LN_HALF + math.log(1.2), l[0, 2], l[0, 3]],
      [l[1, 0], l[1, 1], LN_HALF + math.log(0.8), l[1, 3]],
  ])
  expected = (-clipped[0].sum() + clipped[1].sum()) / 8  # Small: float32 cancellation.
  assert loss == pytest.approx(expected, abs=1e-6)
  # Gradient -A / 8 per token, except the two clipped tokens.
  np.testing.assert_allclose(grad, [[-1 / 8, 0, -1 / 8, -1 / 8], [1 / 8, 1 / 8, 0, 1 / 8]],
                             atol=1e-7)
  assert float(diag["clipfrac"]) == pytest.approx(2 / 8)
  assert float(diag["clipfrac_high"]) == float(diag["clipfrac_low"]) == pytest.approx(1 / 8)
  assert float(diag["pg_loss"]) == pytest.approx(expected, abs=1e-6)


def test_cpgd_drift_term_hand_computed():
  logp, old = _from_ratios([[1.0, 1.3, 0.7, 1.1], [1.0, 1.3, 0.7, 0.9]])
  base = PolicyLossConfig(loss_type="cpgd", drift_coef=0.0)
  with_drift = PolicyLossConfig(loss_type="cpgd", drift_coef=0.1, drift_clip=0.2)
  args = (jnp.array([[1.0], [-1.0]]), ONE, jnp.ones((2, 4)))
  loss0, _, grad0 = _loss_and_grad(logp, old, *args, base)
  loss1, diag, grad1 = _loss_and_grad(logp, old, *args, with_drift)
  # min(r - 1, 0.2): 1.3 -> 0.2 (clipped), 0.7 -> -0.3, 1.1 -> 0.1, 0.9 -> -0.1.
  coef = np.array([[0.0, 0.2, -0.3, 0.1], [0.0, 0.2, -0.3, -0.1]])
  drift = (coef * np.asarray(logp)).sum() / 8
  assert loss1 - loss0 == pytest.approx(0.1 * drift, rel=1e-5)
  assert float(diag["drift_loss"]) == pytest.approx(drift, rel=1e-5)
  np.testing.assert_allclose(grad1 - grad0, 0.1 * coef / 8, atol=1e-7)
  assert float(diag["drift_clipfrac"]) == pytest.approx(2 / 8)


def test_ppo_clip_and_dual_clip_hand_computed():
  # One token per sequence: A = (2, 2, -1, -2), ratios (1.3, 0.7, 0.7, 5), eps 0.2, c = 3.
  logp, old = _from_ratios([[1.3], [0.7], [0.7], [5.0]])
  adv = jnp.array([[2.0], [2.0], [-1.0], [-2.0]])
  mask = jnp.ones((4, 1))
  loss, diag, grad = _loss_and_grad(logp, old, adv, ONE, mask,
                                    PolicyLossConfig.preset("ppo_clip", dual_clip=3.0))
  # max(-2.6, -2.4) = -2.4 (clipped); max(-1.4, -1.6) = -1.4; max(0.7, 0.8) = 0.8 (clipped);
  # max(10, 2.4) = 10 capped by the dual clip at 3 * 2 = 6.
  assert loss == pytest.approx((-2.4 - 1.4 + 0.8 + 6.0) / 4, rel=1e-5)
  # Only the unclipped token has gradient: -A r / 4 = -2 * 0.7 / 4.
  np.testing.assert_allclose(grad[:, 0], [0, -0.35, 0, 0], atol=1e-6)
  for name in ("clipfrac_high", "clipfrac_low", "dual_clipfrac"):
    assert float(diag[name]) == pytest.approx(0.25)
  loss, _, grad = _loss_and_grad(logp, old, adv, ONE, mask, PolicyLossConfig.preset("ppo_clip"))
  # Without the dual clip the last token costs 10 and has gradient -A r / 4 = 2.5.
  assert loss == pytest.approx((-2.4 - 1.4 + 0.8 + 10.0) / 4, rel=1e-5)
  np.testing.assert_allclose(grad[:, 0], [0, -0.35, 0, 2.5], rtol=1e-5, atol=1e-6)


def test_dapo_clip_higher_hand_computed():
  # eps_low 0.2, eps_high 0.28: 1.25 stays inside, 1.3 clips at 1.28, 0.75 clips at 0.8.
  logp, old = _from_ratios([[1.25], [1.3], [0.75]])
  config = PolicyLossConfig.preset("dapo")
  assert (config.eps_low, config.eps_high, config.aggregation) == (0.2, 0.28, "token-mean")
  loss, diag, grad = _loss_and_grad(logp, old, jnp.array([[1.0], [1.0], [-1.0]]), ONE,
                                    jnp.ones((3, 1)), config)
  assert loss == pytest.approx((-1.25 - 1.28 + 0.8) / 3, rel=1e-5)
  np.testing.assert_allclose(grad[:, 0], [-1.25 / 3, 0, 0], rtol=1e-5, atol=1e-7)
  assert float(diag["clipfrac_high"]) == float(diag["clipfrac_low"]) == pytest.approx(1 / 3)


def test_grpo_preset_with_k3_kl_hand_computed():
  # Ratio 1 everywhere, pi = 0.5, pi_ref = 0.25: x = ln(pi_ref / pi) = -ln 2,
  # k3 = e^x - x - 1 = ln 2 - 1/2; d k3 / d l = 1 - pi_ref / pi = 1/2.
  config = PolicyLossConfig.preset("grpo")
  logp = jnp.full((2, 2), LN_HALF)
  ref = jnp.full((2, 2), math.log(0.25))
  mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
  loss, diag, grad = _loss_and_grad(logp, logp, jnp.array([[1.0], [-2.0]]), ONE, mask, config,
                                    ref_logp_bt=ref)
  # seq-mean-token-mean: pg = mean(-1, 2) = 0.5 (loss_pg = -A at ratio 1); kl = ln 2 - 1/2.
  k3 = math.log(2) - 0.5
  assert loss == pytest.approx(0.5 + 0.04 * k3, rel=1e-5)
  assert float(diag["kl_ref"]) == pytest.approx(k3, rel=1e-5)
  # Token weights 1/4, 1/4 (sequence 0) and 1/2 (sequence 1); pg gradient -A * weight.
  weights = np.array([[0.25, 0.25], [0.5, 0.0]])
  expected = np.array([[-1.0, -1.0], [2.0, 0.0]]) * weights + 0.04 * 0.5 * weights
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "estimator, expected",
    [("k1", math.log(2)), ("k2", 0.5 * math.log(2) ** 2), ("k3", math.log(2) - 0.5)],
)
def test_kl_estimators_hand_computed(estimator, expected):
  got = kl_penalty(jnp.array([LN_HALF]), jnp.array([math.log(0.25)]), estimator)
  assert float(got[0]) == pytest.approx(expected, rel=1e-6)


def test_kl_estimators_are_unbiased_where_expected():
  # Exact expectations under pi_theta on a categorical: k1 and k3 give KL(pi || pi_ref).
  p = np.array([0.5, 0.3, 0.2])
  q = np.array([0.2, 0.2, 0.6])
  kl = float(np.sum(p * np.log(p / q)))
  for estimator in ("k1", "k3"):
    values = np.asarray(kl_penalty(jnp.log(p), jnp.log(q), estimator))
    assert float(np.sum(p * values)) == pytest.approx(kl, rel=1e-5)


def test_gspo_matches_the_sequence_level_objective():
  rng = np.random.default_rng(0)
  logp = jnp.asarray(rng.normal(-1.0, 0.3, (3, 4)), jnp.float32)
  old = jnp.asarray(np.asarray(logp) + rng.normal(0.0, 0.05, (3, 4)), jnp.float32)
  mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], jnp.float32)
  adv = jnp.array([[1.0], [-0.5], [2.0]])

  def sequence_gspo(l, eps_low, eps_high):  # GSPO, arXiv 2507.18071, eq. (5)-(7).
    s = jnp.exp(jnp.sum(mask * (l - old), -1) / jnp.sum(mask, -1))
    a = adv[:, 0]
    return -jnp.mean(jnp.minimum(s * a, jnp.clip(s, 1 - eps_low, 1 + eps_high) * a))

  for eps in (0.5, 1e-3):  # Every sequence inside the band, then most of them clipped.
    config = PolicyLossConfig.preset("gspo", eps_low=eps, eps_high=eps)
    loss, _, grad = _loss_and_grad(logp, old, adv, ONE, mask, config)
    expected, expected_grad = jax.value_and_grad(sequence_gspo)(logp, eps, eps)
    assert loss == pytest.approx(float(expected), rel=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_entropy_bonus():
  logp = jnp.full((2, 3), LN_HALF)
  entropy = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  mask = jnp.array([[1, 1, 1], [1, 0, 0]], jnp.float32)
  config = PolicyLossConfig(loss_type="pg", drift_coef=0.0, entropy_coef=0.01)
  fn = lambda h: policy_loss_from_logprobs(logp, logp, jnp.zeros((2, 1)), ONE, mask, config,
                                           entropy_bt=h)
  (loss, diag), grad = jax.value_and_grad(fn, has_aux=True)(entropy)
  # A = 0: loss = -0.01 * token-mean(1, 2, 3, 4) = -0.025; d loss / d H = -0.01 / 4 on the mask.
  assert float(loss) == pytest.approx(-0.025)
  assert float(diag["entropy"]) == pytest.approx(2.5)
  np.testing.assert_allclose(grad, -0.0025 * np.asarray(mask), atol=1e-9)


def test_aggregation_modes_hand_computed():
  x = jnp.array([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [5.0, 6.0, 7.0]])
  mask = jnp.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # The last sequence is fully masked.
  # Valid sequences: (1, 2, 3) and (4): token sums 6 and 4, means 2 and 4.
  assert float(aggregate(x, mask, "token-mean")) == pytest.approx(10 / 4)
  assert float(aggregate(x, mask, "seq-mean-token-mean")) == pytest.approx((2 + 4) / 2)
  assert float(aggregate(x, mask, "seq-mean-token-sum")) == pytest.approx((6 + 4) / 2)
  assert float(aggregate(x, mask, "seq-mean-token-sum-norm")) == pytest.approx(10 / 2 / 3)
  assert float(aggregate(x, mask, "seq-mean-token-sum-norm", 10)) == pytest.approx(10 / 2 / 10)
  assert float(aggregate(x, jnp.zeros_like(mask), "seq-mean-token-mean")) == 0.0


@pytest.mark.parametrize("loss_type", ["cpgd", "ppo_clip", "gspo"])
def test_masked_positions_and_fully_masked_samples_are_inert(loss_type):
  rng = np.random.default_rng(1)
  logp = rng.normal(-1.0, 0.2, (3, 4)).astype(np.float32)
  old = (logp + rng.normal(0, 0.1, (3, 4))).astype(np.float32)
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], np.float32)
  adv = jnp.array([[1.0], [-1.0], [3.0]])
  config = PolicyLossConfig(loss_type=loss_type, aggregation="seq-mean-token-mean")
  garbage = np.where(mask > 0, logp, np.nan).astype(np.float32)
  garbage[2, 0] = -np.inf
  loss, diag, grad = _loss_and_grad(jnp.asarray(garbage), jnp.asarray(old), adv, ONE,
                                    jnp.asarray(mask), config)
  assert np.isfinite(loss) and np.isfinite(grad).all()
  assert (grad[mask == 0] == 0).all()
  # The fully masked sample does not count: same loss as the batch without it.
  loss2, _, _ = _loss_and_grad(jnp.asarray(logp[:2]), jnp.asarray(old[:2]), adv[:2], ONE,
                               jnp.asarray(mask[:2]), config)
  assert loss == pytest.approx(loss2, rel=1e-6)
  assert float(diag["num_tokens"]) == 5


def test_objectives_combined_nan_aware_inside_the_loss():
  logp, old = _from_ratios([[1.0, 1.1], [0.9, 1.0], [1.0, 1.0]])
  # Weights (1, 3): row 0 only objective 0 -> 0.5 * 4/1 = 2; row 1: -1 + 3 * 0.5 = 0.5;
  # row 2 has no objective -> 0.
  adv = jnp.array([[0.5, np.nan], [-1.0, 0.5], [np.nan, np.nan]])
  combined = jnp.array([[2.0], [0.5], [0.0]])
  mask = jnp.ones((3, 2))
  config = PolicyLossConfig(loss_type="ppo_clip")
  loss, diag, grad = _loss_and_grad(logp, old, adv, jnp.array([1.0, 3.0]), mask, config)
  loss_ref, _, grad_ref = _loss_and_grad(logp, old, combined, ONE, mask, config)
  assert loss == pytest.approx(loss_ref, rel=1e-6)
  np.testing.assert_allclose(grad, grad_ref, rtol=1e-6)
  assert float(diag["no_objective_fraction"]) == pytest.approx(1 / 3)
  np.testing.assert_allclose(diag["objective_present_fraction"], [2 / 3, 1 / 3], rtol=1e-6)
  np.testing.assert_allclose(diag["objective_advantage_mean"], [-0.25, 0.5], rtol=1e-6)


def test_token_level_advantages():
  logp, old = _from_ratios([[1.0, 1.0, 1.0]])
  adv_btk = jnp.array([[[1.0], [-2.0], [4.0]]])
  config = PolicyLossConfig(loss_type="cpgd", drift_coef=0.0)
  loss, _, grad = _loss_and_grad(logp, old, adv_btk, ONE, jnp.ones((1, 3)), config)
  assert loss == pytest.approx(-(1 - 2 + 4) * LN_HALF / 3, rel=1e-6)
  np.testing.assert_allclose(grad, [[-1 / 3, 2 / 3, -4 / 3]], rtol=1e-6)


# ------------------------------------------------------------ gradients on a categorical

THETA_OLD = jnp.array([0.3, -0.2, 0.5, 0.0, -0.4])
PI_OLD = np.asarray(jax.nn.softmax(THETA_OLD))


def _single_token_loss(theta, action, adv, config):
  """Our loss for one sampled token `action` of a categorical with logits theta."""
  logp = jax.nn.log_softmax(theta)[action].reshape(1, 1)
  old = jnp.log(jnp.asarray(PI_OLD)[action]).reshape(1, 1)
  return policy_loss_from_logprobs(logp, old, jnp.array([[adv]]), ONE, jnp.ones((1, 1)),
                                   config)[0]


@pytest.mark.parametrize(
    "adv, ratio, silenced",
    [
        (1.0, 1.1, False), (1.0, 0.7, False), (1.0, 1.3, True),  # A > 0: only above 1.2.
        (-1.0, 0.9, False), (-1.0, 1.3, False), (-1.0, 0.7, True),  # A < 0: only below 0.8.
    ],
)
def test_cpgd_gradient_is_plain_policy_gradient_inside_the_band(adv, ratio, silenced):
  action = 2
  # Move the logit of `action` so that pi(action) / pi_old(action) = ratio:
  # pi' = r p  <=>  delta = ln(r (1 - p) / (1 - r p)).
  p = PI_OLD[action]
  theta = THETA_OLD.at[action].add(math.log(ratio * (1 - p) / (1 - ratio * p)))
  pi = np.asarray(jax.nn.softmax(theta))
  assert pi[action] / p == pytest.approx(ratio, rel=1e-5)
  config = PolicyLossConfig(loss_type="cpgd", drift_coef=0.0)
  grad = np.asarray(jax.grad(_single_token_loss)(theta, action, adv, config))
  # grad_theta log pi(a) = e_a - pi.
  expected = np.zeros(5) if silenced else -adv * (np.eye(5)[action] - pi)
  np.testing.assert_allclose(grad, expected, atol=1e-6)


def _expected_drift_gradient(theta, clip):
  """sum_a pi_old(a) * grad of the drift term of our loss for sampled token a (A = 0)."""
  config = PolicyLossConfig(loss_type="cpgd", drift_coef=1.0, drift_clip=clip)
  per_action = jax.vmap(lambda a: jax.grad(_single_token_loss)(theta, a, 0.0, config))
  return np.asarray(jnp.einsum("a,av->v", PI_OLD, per_action(jnp.arange(5))))


def test_drift_gradient_is_the_gradient_of_kl_old_to_new():
  theta = THETA_OLD + jnp.array([0.05, -0.08, 0.1, 0.02, -0.04])  # Ratios well inside 1.2.
  ratios = np.asarray(jax.nn.softmax(theta)) / PI_OLD
  assert (ratios - 1 < 0.2).all()

  def kl_old_new(t):  # KL(pi_old || pi_theta), written out.
    return jnp.sum(PI_OLD * (jnp.log(PI_OLD) - jax.nn.log_softmax(t)))

  np.testing.assert_allclose(_expected_drift_gradient(theta, 0.2), jax.grad(kl_old_new)(theta),
                             atol=1e-6)


def test_drift_gradient_is_clipped_above():
  theta = THETA_OLD.at[1].add(0.8)  # pi(1) / pi_old(1) well above 1.2.
  pi = np.asarray(jax.nn.softmax(theta))
  coef = np.minimum(pi / PI_OLD - 1, 0.2)
  assert (pi / PI_OLD - 1 > 0.2).any()
  # E_old[min(r - 1, c) grad log pi(a)] with grad log pi(a) = e_a - pi.
  expected = np.sum(PI_OLD[:, None] * coef[:, None] * (np.eye(5) - pi[None, :]), axis=0)
  np.testing.assert_allclose(_expected_drift_gradient(theta, 0.2), expected, atol=1e-6)


@pytest.mark.parametrize("preset", ["ppo_clip", "gspo", "cpgd", "pg"])
def test_losses_reduce_to_vanilla_policy_gradient_at_ratio_one(preset):
  rng = np.random.default_rng(2)
  hidden = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  lm_head = jnp.asarray(rng.normal(size=(4, 7)) * 0.5, jnp.float32)
  targets = jnp.asarray(rng.integers(0, 7, (2, 3)))
  mask = jnp.array([[1, 1, 1], [1, 1, 0]], jnp.float32)
  adv = jnp.array([[1.5], [-0.5]])

  def log_probs(w):  # Independent of the code under test.
    logits = jnp.einsum("btd,dv->btv", hidden, w, precision="highest")
    return jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]

  def vanilla_pg(w):  # -1/B sum_b A_b mean_t log pi(y_bt)
    return -jnp.mean(adv[:, 0] * jnp.sum(mask * log_probs(w), -1) / jnp.sum(mask, -1))

  old = jax.lax.stop_gradient(log_probs(lm_head))
  config = PolicyLossConfig.preset(preset, aggregation="seq-mean-token-mean")
  ours = lambda w: multiobjective_pg_loss_reference(hidden, w, targets, old, adv, ONE, mask,
                                                    config)[0]
  np.testing.assert_allclose(jax.grad(ours)(lm_head), jax.grad(vanilla_pg)(lm_head),
                             rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ references


def test_token_logprobs_reference_matches_numpy():
  rng = np.random.default_rng(3)
  hidden = rng.normal(size=(2, 3, 5)).astype(np.float32)
  lm_head = rng.normal(size=(5, 11)).astype(np.float32)
  targets = rng.integers(0, 11, (2, 3))
  logits = np.einsum("btd,dv->btv", hidden.astype(np.float64), lm_head.astype(np.float64)) / 0.7
  logits -= logits.max(-1, keepdims=True)
  logp_v = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  logp, entropy = token_logprobs_reference(jnp.asarray(hidden), jnp.asarray(lm_head),
                                           jnp.asarray(targets), 0.7)
  np.testing.assert_allclose(logp, np.take_along_axis(logp_v, targets[..., None], -1)[..., 0],
                             rtol=1e-5)
  np.testing.assert_allclose(entropy, -(np.exp(logp_v) * logp_v).sum(-1), rtol=1e-5)
  assert logp.dtype == entropy.dtype == jnp.float32
  bf16 = token_logprobs_reference(jnp.asarray(hidden, jnp.bfloat16),
                                  jnp.asarray(lm_head, jnp.bfloat16), jnp.asarray(targets), 0.7)
  assert bf16[0].dtype == jnp.float32
  np.testing.assert_allclose(bf16[0], logp, atol=0.1)


def test_multiobjective_reference_is_logprobs_then_loss():
  rng = np.random.default_rng(4)
  hidden = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  lm_head = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 6, (2, 3)))
  old = jnp.full((2, 3), -1.5)
  adv, weights, mask = jnp.array([[1.0, np.nan], [0.5, -1.0]]), jnp.array([0.5, 0.5]), \
      jnp.ones((2, 3))
  config = PolicyLossConfig(entropy_coef=0.01, temperature=0.9, kl_coef=0.1)
  ref = jnp.full((2, 3), -2.0)
  loss, diag = multiobjective_pg_loss_reference(hidden, lm_head, targets, old, adv, weights, mask,
                                                config, ref_logp_bt=ref)
  logp, entropy = token_logprobs_reference(hidden, lm_head, targets, 0.9)
  loss2, diag2 = policy_loss_from_logprobs(logp, old, adv, weights, mask, config,
                                           ref_logp_bt=ref, entropy_bt=entropy)
  assert float(loss) == pytest.approx(float(loss2), rel=1e-6)
  assert diag.keys() == diag2.keys() and "entropy" in diag and "kl_ref" in diag


# ---------------------------------------------------------------------------- errors


def test_config_and_input_errors_name_the_problem():
  with pytest.raises(KeyError, match="unknown policy loss 'ppo'; known: .*cpgd.*gspo"):
    PolicyLossConfig(loss_type="ppo")
  with pytest.raises(ValueError, match="aggregation"):
    PolicyLossConfig(aggregation="mean")
  with pytest.raises(ValueError, match="dual_clip"):
    PolicyLossConfig(dual_clip=1.0)
  with pytest.raises(KeyError, match="unknown policy loss preset"):
    PolicyLossConfig.preset("trpo")
  assert set(POLICY_LOSSES) >= {"cpgd", "ppo_clip", "dapo", "grpo", "gspo", "pg"}
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="needs ref_logp_bt"):
    policy_loss_from_logprobs(x, x, jnp.zeros((2, 1)), ONE, x, PolicyLossConfig(kl_coef=0.1))
  with pytest.raises(ValueError, match="needs entropy_bt"):
    policy_loss_from_logprobs(x, x, jnp.zeros((2, 1)), ONE, x, PolicyLossConfig(entropy_coef=1.0))
  with pytest.raises(ValueError, match="advantages_bk has shape"):
    policy_loss_from_logprobs(x, x, jnp.zeros((3, 1)), ONE, x, PolicyLossConfig())
  with pytest.raises(ValueError, match="old_logp_bt has shape"):
    policy_loss_from_logprobs(x, jnp.zeros((2, 4)), jnp.zeros((2, 1)), ONE, x, PolicyLossConfig())
