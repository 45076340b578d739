"""Host-side pieces of the RL step driver."""

import numpy as np
import pytest

from cosmojax.rewards.recipes import RewardMatrix
from cosmojax.rl.trainer import OverlongConfig, _per_objective, with_overlong


def test_overlong_objective_is_appended_with_its_weight():
  rewards = RewardMatrix(np.array([[1.0], [0.0], [np.nan]], np.float32),
                         np.array([[1.0], [1.0], [0.0]], np.float32),
                         np.array([[True], [True], [False]]), ("accuracy",), {})
  # max 10, cache 4: soft zone (6, 10]; length 8 -> (6 - 8) / 4 = -0.5; 12 -> -1.
  out = with_overlong(rewards, np.array([8, 12, 0]), np.array([True, True, False]),
                      OverlongConfig(max_length=10, cache_length=4, weight=0.5))
  assert out.names == ("accuracy", "overlong")
  np.testing.assert_allclose(out.rewards_nk[:2, 1], [-0.5, -1.0])
  assert np.isnan(out.rewards_nk[2, 1])
  np.testing.assert_allclose(out.weights_nk[:, 1], [0.5, 0.5, 0.0])
  assert out.routed_nk[:, 1].tolist() == [True, True, False]
  with pytest.raises(ValueError, match="cache_length <= max_length"):
    OverlongConfig(max_length=4, cache_length=8)


def test_per_objective_metrics_are_named():
  out = _per_objective("adv", {"mean": np.array([1.0, 2.0]), "kept": np.float32(0.5),
                               "combined": np.array([3.0])}, ("safety", "value"))
  assert out == {"adv/mean/safety": 1.0, "adv/mean/value": 2.0, "adv/kept": 0.5,
                 "adv/combined": 3.0}
  with pytest.raises(ValueError, match=r"adv/bad has shape \(3,\)"):
    _per_objective("adv", {"bad": np.zeros(3)}, ("safety", "value"))
