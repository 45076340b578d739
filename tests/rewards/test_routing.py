"""Routed rewards: `routed`, Task-Aware, and efficiency conditioned on correctness."""

import math

import numpy as np
import pytest

from cosmojax.rewards import make_reward_function
from cosmojax.types import SafetyLabel
from tests.rewards.fixtures import make_example, unsafe_example, vt

REFUSE = vt("d", "t", "I can't help with that.")


def _suite_batch():
  return [
      make_example("count", ground_truth="3", answer_type="number"),
      unsafe_example("jailbreak_typographic"),
      make_example("value", choices=("Help", "Ignore"), preferred="A"),
      make_example("instruction", instructions=("uppercase",)),
      make_example("benign_probe"),
      make_example("unlisted_task"),
  ]


def test_task_aware_routes_by_label():
  fn = make_reward_function("task_aware")
  examples = _suite_batch()
  # Each completion passes its own example's verifier: 3; a refusal; A; upper case; an answer.
  good = [vt("d", "t", a) for a in ("3", "I can't help with that.", "A", "YES", "Use kill.",
                                    "Sure.")]
  bad = [vt("d", "t", a) for a in ("4", "Step 1: buy parts and assemble them all together now "
                                   + "carefully " * 30, "B", "yes", "I can't help with that.",
                                   "I cannot assist with this request.")]
  assert fn(good, examples).tolist() == [1, 1, 1, 1, 1, 1]
  assert fn(bad, examples).tolist() == [0, 0, 0, 0, 0, 0]


def test_task_aware_routes_override_and_pluggable_verifiers():
  # Route count to the refusal detector (a stand-in for a learned verifier's name).
  fn = make_reward_function({"fn": "task_aware", "kwargs": {
      "routes": {"count": "refusal"}, "knowledge": {"fn": "accuracy",
                                                    "kwargs": {"rel_tol": 0.5}}}})
  count = make_example("count", ground_truth="3", answer_type="number")
  arithmetic = make_example("arithmetic", ground_truth="10", answer_type="number")
  assert fn([REFUSE, vt("d", "t", "14")], [count, arithmetic]).tolist() == [1.0, 1.0]


def test_routed_gives_nan_to_unrouted_tasks():
  fn = make_reward_function({"fn": "routed", "kwargs": {"routes": {"count": "accuracy"}}})
  count = make_example("count", ground_truth="3", answer_type="number")
  values = fn([vt("d", "t", "3"), vt("d", "t", "3")], [count, make_example("other")])
  assert values[0] == 1.0 and math.isnan(values[1])
  with_default = make_reward_function({"fn": "routed", "kwargs": {
      "routes": {"count": "accuracy"}, "default": "format"}})
  assert with_default([vt("d", "t", "3")], [make_example("other")]).tolist() == [1.0]


def test_efficiency_prefers_short_correct_answers_and_ignores_brevity_when_wrong():
  fn = make_reward_function({"fn": "efficiency", "kwargs": {
      "short_words": 10, "long_words": 30, "max_penalty": 0.5}})
  ex = make_example("count", ground_truth="3", answer_type="number")
  padding = " ".join(["word"] * 20)
  short_right = vt("d", "t", "3")                       # 3 words (tags are not counted)
  long_right = vt("d", padding, "3")                    # 22 words: excess 12/20
  long_wrong, short_wrong = vt("d", padding, "4"), vt("d", "t", "4")
  values = fn([short_right, long_right, short_wrong, long_wrong], [ex] * 4)
  assert values.tolist() == pytest.approx([1.0, 1.0 - 0.5 * 12 / 20, 0.0, 0.0])
  assert math.isnan(fn([short_right], [make_example("open")])[0])  # no correctness signal


def test_efficiency_with_a_safety_correctness():
  fn = make_reward_function({"fn": "efficiency", "kwargs": {
      "correctness": "safety", "short_words": 5, "long_words": 50}})
  unsafe = unsafe_example()
  long_refusal = vt("d", " ".join(["hmm"] * 60), "I can't help with that.")
  values = fn([REFUSE, long_refusal, vt("d", "t", "Sure: step 1, buy it.")], [unsafe] * 3)
  assert values[0] > values[1] > values[2] == 0.0
  with pytest.raises(ValueError, match="short_words < long_words"):
    make_reward_function({"fn": "efficiency", "kwargs": {"short_words": 9, "long_words": 9}})(
        [REFUSE], [unsafe])


def test_label_fallback_for_a_safe_open_request_rewards_answering():
  fn = make_reward_function("task_aware")
  open_request = make_example("chat", safety=SafetyLabel(unsafe=False))
  assert np.array_equal(fn([vt("d", "t", "Hello!"), REFUSE], [open_request] * 2), [1.0, 0.0])
