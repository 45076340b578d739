"""Advantage estimators against hand-computed cases, and their invariants (hypothesis).

Expected numbers are derived in the comments from the equations in cosmojax/rl/advantages.py;
"std" is the unbiased (ddof=1) group standard deviation, the default.
"""

import math

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosmojax.rl import (
    ADVANTAGE_ESTIMATORS,
    AdvantageConfig,
    combine_objectives,
    compute_advantages,
    contiguous_group_ids,
    overlong_penalty,
    reinforce_pp_token_advantages,
)

NAN = np.nan
# One objective, two groups of three: group 0 = [1, 0, 0] (mean 1/3, deviations 2/3, -1/3,
# -1/3, sum of squares 2/3, std sqrt(1/3)); group 1 = [2, 2, 2] has no variance.
R_SIMPLE = np.array([[1.0], [0.0], [0.0], [2.0], [2.0], [2.0]], np.float32)
IDS_SIMPLE = np.array([0, 0, 0, 1, 1, 1], np.int32)
S3 = math.sqrt(1 / 3)


def _adv(rewards, ids, weights, **config):
  out = compute_advantages(
      jnp.asarray(rewards), jnp.asarray(ids), jnp.asarray(weights, jnp.float32),
      AdvantageConfig(**config),
  )
  return np.asarray(out.advantages), out


@pytest.mark.parametrize(
    "estimator, expected",
    [
        # (r - mean) / std: 2/3 / sqrt(1/3) = 2 sqrt(1/3); -1/3 / sqrt(1/3) = -sqrt(1/3).
        ("grpo", [2 * S3, -S3, -S3, 0, 0, 0]),
        ("cpgd_std", [2 * S3, -S3, -S3, 0, 0, 0]),
        ("dr_grpo", [2 / 3, -1 / 3, -1 / 3, 0, 0, 0]),
        ("cpgd_naive", [2 / 3, -1 / 3, -1 / 3, 0, 0, 0]),
        # Leave-one-out: 1 - mean(0, 0) = 1; 0 - mean(1, 0) = -1/2.
        ("rloo", [1.0, -0.5, -0.5, 0, 0, 0]),
        # 2 groups, 1 with variance: factor min(2 / 1, 3) = 2.
        ("cpgd_clip_filter_like", [4 / 3, -2 / 3, -2 / 3, 0, 0, 0]),
        # Batch of six: mean 7/6, deviations (-1, -7, -7, 5, 5, 5)/6, sum of squares 174/36,
        # std sqrt(174/36/5).
        ("reinforce_pp", np.array([-1, -7, -7, 5, 5, 5]) / 6 / math.sqrt(174 / 36 / 5)),
        # Centered (2/3, -1/3, -1/3, 0, 0, 0): mean 0, sum of squares 2/3, std sqrt(2/15).
        ("reinforce_pp_baseline", np.array([2, -1, -1, 0, 0, 0]) / 3 / math.sqrt(2 / 15)),
    ],
)
def test_estimators_hand_computed(estimator, expected):
  adv, out = _adv(R_SIMPLE, IDS_SIMPLE, [1.0], estimator=estimator)
  np.testing.assert_allclose(adv[:, 0], expected, rtol=1e-5, atol=1e-6)
  assert np.asarray(out.sample_mask).all()
  np.testing.assert_allclose(out.stats["zero_variance_fraction"], [0.5])


def test_clip_filter_like_factor_is_capped_at_three():
  # Four groups of two, only group 0 varies: min(4 / 1, 3) = 3; centered (1/2, -1/2).
  rewards = np.array([[1.0], [0.0], [1], [1], [0], [0], [2], [2]], np.float32)
  adv, out = _adv(rewards, contiguous_group_ids(8, 2), [1.0], estimator="cpgd_clip_filter_like")
  np.testing.assert_allclose(adv[:, 0], [1.5, -1.5, 0, 0, 0, 0, 0, 0], atol=1e-6)
  np.testing.assert_allclose(out.stats["clip_filter_factor"], [3.0])


def test_zero_variance_group_is_exactly_zero():
  # 0.1 is inexact in float32: r - mean leaves a residue that / eps would blow up.
  rewards = np.full((3, 1), 0.1, np.float32)
  for estimator in ADVANTAGE_ESTIMATORS:
    adv, _ = _adv(rewards, np.zeros(3, np.int32), [1.0], estimator=estimator)
    assert (adv == 0.0).all(), estimator


def test_single_sample_groups_get_zero_advantage():
  # Group 1 holds one sample: no baseline, no variance.
  rewards = np.array([[1.0], [0.0], [5.0]], np.float32)
  for estimator in ("grpo", "dr_grpo", "rloo", "cpgd_clip_filter_like"):
    adv, out = _adv(rewards, np.array([0, 0, 1], np.int32), [1.0], estimator=estimator)
    assert adv[2, 0] == 0.0 and adv[0, 0] > 0 > adv[1, 0], estimator
    np.testing.assert_allclose(out.stats["zero_variance_group_fraction"], 0.5)


# Two objectives with routing: objective 1 is missing for samples 0 and 3.
R_ROUTED = np.array([[1.0, NAN], [0.0, 1.0], [1.0, 0.0], [0.0, NAN]], np.float32)


def test_normalize_then_sum_with_nan_routing():
  adv, out = _adv(R_ROUTED, np.zeros(4, np.int32), [1.0, 3.0], mode="normalize_then_sum")
  # Objective 0: [1, 0, 1, 0], mean 1/2, std sqrt(1/3) -> +-(1/2)/sqrt(1/3) = +-0.8660.
  np.testing.assert_allclose(adv[:, 0], [0.5 / S3, -0.5 / S3, 0.5 / S3, -0.5 / S3], rtol=1e-5)
  # Objective 1 over samples 1, 2 only: [1, 0], mean 1/2, std sqrt(1/2) -> +-0.7071; NaN stays.
  assert np.isnan(adv[[0, 3], 1]).all()
  np.testing.assert_allclose(adv[[1, 2], 1], [0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5)],
                             rtol=1e-5)
  np.testing.assert_allclose(out.weights, [1.0, 3.0])
  np.testing.assert_allclose(out.stats["reward_present_fraction"], [1.0, 0.5])
  np.testing.assert_allclose(out.stats["reward_mean"], [0.5, 0.5])


def test_sum_then_normalize_with_nan_routing():
  adv, out = _adv(R_ROUTED, np.zeros(4, np.int32), [1.0, 3.0], mode="sum_then_normalize")
  # Combined (weights 1, 3, total 4): sample 0 has only objective 0 -> 1 * 4/1 = 4;
  # sample 1: 0 + 3 = 3; sample 2: 1 + 0 = 1; sample 3: 0 * 4 = 0. Mean 2, deviations
  # (2, 1, -1, -2), sum of squares 10, std sqrt(10/3).
  np.testing.assert_allclose(adv[:, 0], np.array([2, 1, -1, -2]) / math.sqrt(10 / 3), rtol=1e-5)
  np.testing.assert_allclose(out.weights, [1.0])
  np.testing.assert_allclose(out.stats["combined_reward_mean"], 2.0)


def test_sample_without_objective_and_masked_sample():
  rewards = np.array([[1.0, NAN], [0.0, NAN], [NAN, NAN], [7.0, 7.0]], np.float32)
  out = compute_advantages(
      jnp.asarray(rewards), jnp.zeros(4, jnp.int32), jnp.array([1.0, 1.0]),
      AdvantageConfig(mode="normalize_then_sum"), sample_mask_n=jnp.array([1, 1, 1, 0], bool),
  )
  adv = np.asarray(out.advantages)
  # Sample 3 is masked out (it would otherwise shift the group mean); sample 2 has nothing.
  # Objective 0 over samples 0, 1: [1, 0] -> +-0.7071.
  np.testing.assert_allclose(adv[:2, 0], [0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5)], rtol=1e-5)
  assert np.isnan(adv[2:]).all() and np.isnan(adv[:, 1]).all()
  np.testing.assert_array_equal(out.sample_mask, [True, True, False, False])
  np.testing.assert_allclose(out.stats["no_objective_fraction"], 1 / 3)
  np.testing.assert_allclose(out.stats["kept_fraction"], 2 / 3)


def test_dynamic_sampling_masks_groups_without_variance():
  rewards = np.array([[1.0], [0.0], [1.0], [1.0], [0.5], [0.5]], np.float32)
  ids = contiguous_group_ids(6, 2)
  for estimator in ("grpo", "reinforce_pp"):
    adv, out = _adv(rewards, ids, [1.0], estimator=estimator, dynamic_sampling=True)
    np.testing.assert_array_equal(out.sample_mask, [True, True, False, False, False, False])
    np.testing.assert_allclose(out.stats["kept_fraction"], 1 / 3)
    np.testing.assert_allclose(out.stats["zero_variance_group_fraction"], 2 / 3)
    # Dropped before estimating: REINFORCE++ whitens over [1, 0] only -> +-0.7071.
    np.testing.assert_allclose(adv[:, 0], [1 / math.sqrt(2), -1 / math.sqrt(2), 0, 0, 0, 0],
                               rtol=1e-5)
  # Without the filter, the same groups stay in the mask.
  _, out = _adv(rewards, ids, [1.0])
  assert np.asarray(out.sample_mask).all()


def test_dynamic_sampling_keeps_group_if_any_objective_varies():
  rewards = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.0]], np.float32)
  _, out = _adv(rewards, contiguous_group_ids(4, 2), [1.0, 1.0], mode="normalize_then_sum",
                dynamic_sampling=True)
  np.testing.assert_array_equal(out.sample_mask, [True, True, False, False])


def test_combine_objectives_hand_computed():
  values = jnp.array([[1.0, 2.0, 3.0], [1.0, NAN, 3.0], [NAN, NAN, NAN], [NAN, 5.0, NAN]])
  combined, has = combine_objectives(values, jnp.array([1.0, 0.0, 2.0]))
  # Row 0: 1 + 0 + 6 = 7. Row 1: the missing objective has weight 0: 7 again.
  # Row 2: nothing -> 0. Row 3: only a zero-weight objective -> 0, flagged.
  np.testing.assert_allclose(combined, [7.0, 7.0, 0.0, 0.0])
  np.testing.assert_array_equal(has, [True, True, False, False])
  combined, _ = combine_objectives(jnp.array([[NAN, 2.0, 3.0]]), jnp.array([1.0, 1.0, 2.0]))
  # Present weights 1 + 2 = 3 of 4: (2 + 6) * 4/3.
  np.testing.assert_allclose(combined, [32 / 3], rtol=1e-6)


def test_reinforce_pp_token_level_kl_hand_computed():
  # Two samples, T = 3; sample 1 has two response tokens. Rewards 1 and 0, beta = 0.5.
  mask = jnp.array([[1, 1, 1], [1, 1, 0]], jnp.float32)
  kl = jnp.array([[0.2, 0.4, 0.2], [0.2, 0.2, 9.0]])  # 9.0 sits off the mask.
  out = reinforce_pp_token_advantages(
      jnp.array([[1.0], [0.0]]), jnp.array([1.0]), mask, kl_bt=kl, kl_coef=0.5
  )
  # Returns G_t = R - 0.5 * sum_{s>=t} kl_s: sample 0: 1 - 0.5*(0.8, 0.6, 0.2) = (0.6, 0.7, 0.9);
  # sample 1: 0 - 0.5*(0.4, 0.2) = (-0.2, -0.1). Whitened over the five response tokens.
  returns = np.array([0.6, 0.7, 0.9, -0.2, -0.1])
  whitened = (returns - returns.mean()) / (returns.std(ddof=1) + 1e-6)
  adv = np.asarray(out.advantages)[..., 0]
  np.testing.assert_allclose(adv[0], whitened[:3], rtol=1e-5)
  np.testing.assert_allclose(adv[1, :2], whitened[3:], rtol=1e-5)
  assert adv[1, 2] == 0.0 and out.advantages.shape == (2, 3, 1)
  np.testing.assert_allclose(out.stats["return_mean"], returns.mean(), rtol=1e-6)


def test_reinforce_pp_token_level_without_kl_matches_sample_level():
  rewards = np.array([[1.0], [0.0], [0.5], [2.0]], np.float32)
  # ddof = 0: the sample count (4) and the token count (20) then give the same whitening.
  token = reinforce_pp_token_advantages(
      jnp.asarray(rewards), jnp.array([1.0]), jnp.ones((4, 5)), ddof=0
  )
  sample, _ = _adv(rewards, np.arange(4, dtype=np.int32), [1.0], estimator="reinforce_pp", ddof=0)
  np.testing.assert_allclose(np.asarray(token.advantages)[:, :, 0], np.repeat(sample, 5, 1),
                             rtol=1e-5)


def test_overlong_penalty_hand_computed():
  # L_max = 16, L_cache = 4: free up to 12, then (12 - L)/4, -1 beyond 16.
  got = overlong_penalty(jnp.array([1, 12, 13, 14, 16, 17]), 16, 4)
  np.testing.assert_allclose(got, [0, 0, -0.25, -0.5, -1.0, -1.0])
  with pytest.raises(ValueError, match="cache_length"):
    overlong_penalty(jnp.array([1]), 4, 8)


def test_errors_name_the_problem():
  with pytest.raises(KeyError, match="unknown advantage estimator 'gpro'; known: .*grpo"):
    AdvantageConfig(estimator="gpro")
  with pytest.raises(ValueError, match="mode"):
    AdvantageConfig(mode="sum")
  ids = jnp.zeros(4, jnp.int32)
  with pytest.raises(ValueError, match="weights_k has shape"):
    compute_advantages(jnp.zeros((4, 2)), ids, jnp.ones(3))
  with pytest.raises(ValueError, match="group_ids_n must be integer"):
    compute_advantages(jnp.zeros((4, 2)), jnp.zeros(4), jnp.ones(2))
  with pytest.raises(ValueError, match=r"group_ids_n must lie in \[0, 2\)"):
    compute_advantages(jnp.zeros((4, 1)), jnp.arange(4), jnp.ones(1), num_groups=2)
  with pytest.raises(ValueError, match="nonnegative"):
    compute_advantages(jnp.zeros((4, 2)), ids, jnp.array([1.0, -1.0]))
  with pytest.raises(ValueError, match="do not split"):
    contiguous_group_ids(6, 4)


def test_compute_advantages_inside_an_outer_jit():
  fn = jax.jit(lambda r, i, w: compute_advantages(r, i, w).advantages)
  got = fn(jnp.asarray(R_SIMPLE), jnp.asarray(IDS_SIMPLE), jnp.array([1.0]))
  np.testing.assert_allclose(got[:, 0], [2 * S3, -S3, -S3, 0, 0, 0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- properties

N, G, K = 8, 4, 2
IDS_PROP = np.repeat(np.arange(N // G, dtype=np.int32), G)
# A grid of quarters: ties, zero-variance groups and NaN routing are frequent, and distinct
# rewards differ by far more than float32 rounding.
REWARD = st.one_of(st.sampled_from([0.0, 1.0, NAN]), st.integers(-20, 20).map(lambda i: i / 4))
REWARDS = hnp.arrays(np.float32, (N, K), elements=REWARD)
SETTINGS = hypothesis.settings(max_examples=30, deadline=None)


@SETTINGS
@hypothesis.given(rewards=REWARDS, estimator=st.sampled_from(["grpo", "rloo", "dr_grpo"]))
def test_group_advantages_sum_to_zero(rewards, estimator):
  adv, _ = _adv(rewards, IDS_PROP, [1.0, 1.0], estimator=estimator, mode="normalize_then_sum")
  sums = np.nansum(adv.reshape(N // G, G, K), axis=1)
  np.testing.assert_allclose(sums, 0.0, atol=1e-3)


@SETTINGS
@hypothesis.given(rewards=REWARDS, scale=st.floats(0.1, 10), group=st.integers(0, N // G - 1))
def test_grpo_invariant_to_positive_scaling_of_a_group(rewards, scale, group):
  scaled = rewards.copy()
  scaled[group * G:(group + 1) * G] *= np.float32(scale)
  for mode in ("normalize_then_sum", "sum_then_normalize"):
    before, _ = _adv(rewards, IDS_PROP, [1.0, 2.0], eps=0.0, mode=mode)
    after, _ = _adv(scaled, IDS_PROP, [1.0, 2.0], eps=0.0, mode=mode)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)


@SETTINGS
@hypothesis.given(
    rewards=REWARDS,
    perm=st.permutations(list(range(N))),
    estimator=st.sampled_from(sorted(ADVANTAGE_ESTIMATORS)),
)
def test_permuting_samples_permutes_advantages(rewards, perm, estimator):
  perm = np.array(perm)
  config = dict(estimator=estimator, mode="normalize_then_sum", dynamic_sampling=True)
  adv, out = _adv(rewards, IDS_PROP, [1.0, 1.0], **config)
  adv_p, out_p = _adv(rewards[perm], IDS_PROP[perm], [1.0, 1.0], **config)
  np.testing.assert_allclose(adv_p, adv[perm], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out_p.sample_mask, np.asarray(out.sample_mask)[perm])


@SETTINGS
@hypothesis.given(
    rewards=REWARDS,
    estimator=st.sampled_from(sorted(ADVANTAGE_ESTIMATORS)),
    mode=st.sampled_from(["normalize_then_sum", "sum_then_normalize"]),
)
def test_nan_routing_never_gives_nan_to_samples_with_an_objective(rewards, estimator, mode):
  adv, out = _adv(rewards, IDS_PROP, [1.0, 0.5], estimator=estimator, mode=mode)
  combined, has = combine_objectives(jnp.asarray(adv), out.weights)
  has_reward = ~np.isnan(rewards).all(axis=1)
  np.testing.assert_array_equal(has, has_reward)
  assert np.isfinite(np.asarray(combined)).all()
  assert np.isfinite(adv[has_reward] if mode == "sum_then_normalize" else 0.0).all()
  np.testing.assert_array_equal(out.sample_mask, has_reward)
