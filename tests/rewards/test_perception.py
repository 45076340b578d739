"""Key-fact coverage (R_vkey, R_tkey), Visual-Focus and consistency."""

import math

import pytest

from cosmojax.rewards import coverage_level, make_reward_function
from tests.rewards.fixtures import make_example, vt

FACTS = ("3 red circles", "1 blue square")


@pytest.mark.parametrize("fraction,expected", [
    (0.0, 0.0), (0.49, 0.0), (0.5, 0.5), (0.99, 0.5), (1.0, 1.0)])
def test_coverage_levels_default_thresholds(fraction, expected):
  assert coverage_level(fraction) == expected


def test_coverage_levels_custom():
  assert coverage_level(0.3, tau_lo=0.25, tau_hi=0.75, levels=(-1, 0, 2)) == 0
  assert coverage_level(0.8, tau_lo=0.25, tau_hi=0.75, levels=(-1, 0, 2)) == 2
  assert math.isnan(coverage_level(math.nan))
  with pytest.raises(ValueError, match="tau_lo <= tau_hi"):
    coverage_level(0.5, tau_lo=0.8, tau_hi=0.2)


def test_visual_key_reads_the_description_only():
  vkey = make_reward_function("visual_key")
  ex = make_example(visual_key_facts=FACTS)
  completions = [
      vt("Three red circles and one blue square.", "t", "3"),   # 2/2
      vt("Three red circles.", "one blue square", "3"),          # 1/2 (square only in think)
      vt("Some shapes.", "3 red circles, 1 blue square", "3"),   # 0/2
      "<description>3 red circles and 1 blue square</description><answer>3</answer>"
      "<description>again</description>",                        # repeated: unreadable
  ]
  assert vkey(completions, [ex] * 4).tolist() == [1.0, 0.5, 0.0, 0.0]
  assert math.isnan(vkey([completions[0]], [make_example()])[0])  # no facts


def test_textual_key_reads_the_reasoning_with_configured_thresholds():
  tkey = make_reward_function({"fn": "textual_key", "kwargs": {"tau_lo": 0.3, "tau_hi": 0.6}})
  ex = make_example(textual_key_facts=("count the circles", "ignore the squares",
                                       "check twice"))
  completions = [vt("d", "I count the circles and check twice.", "3"),  # 2/3 >= 0.6
                 vt("d", "I count the circles.", "3"),                  # 1/3 >= 0.3
                 vt("count the circles", "so", "3")]                    # 0/3
  assert tkey(completions, [ex] * 3).tolist() == [1.0, 0.5, 0.0]


def test_visual_focus_is_the_covered_fraction_before_the_answer():
  focus = make_reward_function({"fn": "visual_focus", "kwargs": {"tags": ("think", "answer")}})
  ex = make_example(visual_key_facts=FACTS)
  completions = ["<think>I see 3 red circles.</think><answer>1 blue square</answer>",
                 "I see 3 red circles and 1 blue square, so 3."]  # untagged: whole text
  assert focus(completions, [ex] * 2).tolist() == [0.5, 1.0]


def test_consistency_flags_a_different_number():
  cons = make_reward_function("consistency")
  ex = make_example(ground_truth="3", answer_type="number")
  completions = [
      vt("There are three red circles.", "t", "3"),
      vt("There are three red circles.", "t", "4"),          # contradiction
      vt("There are red circles.", "I count 3.", "3"),       # only the reasoning supports it
      "<think>t</think><answer>3</answer>",                   # no description to support it
      vt("There are three red circles.", "t", "many"),        # nothing checkable
  ]
  values = cons(completions, [ex] * 5)
  assert values[:4].tolist() == [1.0, 0.0, 0.0, 0.0]
  assert math.isnan(values[4])


def test_consistency_with_reasoning_as_support_and_question_numbers():
  cons = make_reward_function({"fn": "consistency", "kwargs": {
      "support": ("description", "question", "think")}})
  ex = make_example("arithmetic", prompt="What is 3 + 4?", ground_truth="7",
                    answer_type="number")
  assert cons([vt("The digits 3 and 4.", "3 + 4 = 7", "7"),
               vt("The digits 3 and 4.", "3 + 4 = 7", "8")], [ex] * 2).tolist() == [1.0, 0.0]


def test_consistency_of_choices_and_text_uses_description_words():
  cons = make_reward_function("consistency")
  ex = make_example("compare", prompt="Which circle is larger? A. red B. blue",
                    ground_truth="B", answer_type="choice", choices=("red", "blue"))
  # The question lists both options, so only the description can support the chosen one.
  assert cons([vt("A large blue circle, a small green one.", "t", "B"),
               vt("A large blue circle, a small green one.", "t", "A")],
              [ex] * 2).tolist() == [1.0, 0.0]
