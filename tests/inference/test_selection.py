"""Aggregation of step scores and top-k selection, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from cosmojax import inference

# Three candidates of up to 3 steps: [2, -1, 4], [0.5], and none.
SCORES = np.array([[2.0, -1.0, 4.0], [0.5, 9.0, 9.0], [7.0, 7.0, 7.0]], np.float32)
MASK = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], bool)


@pytest.mark.parametrize("mode, expected", [
    ("sum", [5.0, 0.5, 0.0]),
    ("mean", [5.0 / 3, 0.5, 0.0]),
    ("last", [4.0, 0.5, 0.0]),
    ("min", [-1.0, 0.5, 0.0]),
])
def test_aggregate_step_scores(mode, expected):
  out = inference.aggregate_step_scores(SCORES, MASK, mode)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6)


def test_aggregate_rejects_unknown_mode():
  with pytest.raises(ValueError, match="unknown step-score aggregation 'max'"):
    inference.aggregate_step_scores(SCORES, MASK, "max")


def test_top_k_valid_skips_invalid_and_breaks_ties_by_index():
  scores = np.array([[1.0, 5.0, 5.0, 9.0, 3.0],
                     [2.0, 1.0, 0.0, 0.0, 0.0]], np.float32)
  valid = np.array([[1, 1, 1, 0, 1],   # 9.0 is invalid (padding or a duplicate)
                    [1, 1, 0, 0, 0]], bool)  # only two valid candidates for k = 3
  index, kept = inference.top_k_valid(scores, valid, 3)
  assert np.asarray(index)[0].tolist() == [1, 2, 4]  # 5.0 (index 1) before 5.0 (index 2)
  assert np.asarray(kept)[0].tolist() == [True, True, True]
  assert np.asarray(index)[1, :2].tolist() == [0, 1]
  assert np.asarray(kept)[1].tolist() == [True, True, False]
