"""Format and repetition terms."""

import pytest

from cosmojax.rewards import make_reward_function, repeated_ngram_fraction
from tests.rewards.fixtures import make_example, vt


def test_format_is_all_or_nothing_by_default():
  fmt = make_reward_function("format")
  completions = [
      vt("d", "t", "2"),
      "<description>d</description><answer>2</answer>",           # missing think
      vt("d", "t", "2") + "<answer>3</answer>",                    # repeated answer
      "<description>d <answer>2</answer></description><think>t</think>",  # nested answer
      "<think>t</think><description>d</description><answer>2</answer>",  # out of order
      "2",                                                         # no structure
  ]
  assert fmt(completions, [make_example()] * 6).tolist() == [1, 0, 0, 0, 0, 0]


def test_format_partial_credit_counts_readable_fields():
  fmt = make_reward_function({"fn": "format", "kwargs": {"partial_credit": 0.5}})
  missing_think = "<description>d</description><answer>2</answer>"
  assert fmt([missing_think], [make_example()]).tolist() == [0.5 * 2 / 3]


def test_repeated_ngram_fraction_by_hand():
  # 6 words -> 4 trigrams: (a b c) (b c a) (c a b) (a b c): 3 distinct of 4.
  assert repeated_ngram_fraction("a b c a b c", 3) == pytest.approx(0.25)
  assert repeated_ngram_fraction("one two three four", 3) == 0.0
  assert repeated_ngram_fraction("too short", 3) == 0.0
  # Bigrams of "x x x x x": 4, all equal: 1 - 1/4.
  assert repeated_ngram_fraction("x x x x x", 2) == pytest.approx(0.75)


def test_repetition_penalty_scales_and_applies_everywhere():
  rep = make_reward_function({"fn": "repetition", "kwargs": {"ngram": 2, "max_penalty": 2.0}})
  looping = "I think I think I think I think"  # 7 bigrams, 2 distinct
  values = rep([looping, "a clean short answer"], [make_example(), make_example("x")])
  assert values.tolist() == pytest.approx([-2.0 * (1 - 2 / 7), 0.0])
  with pytest.raises(ValueError, match="ngram must be >= 1"):
    make_reward_function({"fn": "repetition", "kwargs": {"ngram": 0}})(["a"], [make_example()])
