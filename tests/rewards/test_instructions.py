"""Instruction checkers and the instruction-following reward."""

import math

import pytest

from cosmojax.rewards import (INSTRUCTION_CHECKERS, check_instruction, make_reward_function,
                              parse_instruction)
from tests.rewards.fixtures import make_example, vt


@pytest.mark.parametrize("text,instruction,ok", [
    ("THREE CIRCLES!", "uppercase", True), ("Three circles", "uppercase", False),
    ("123", "uppercase", False),  # no letter at all
    ("three circles", "lowercase", True), ("three Circles", "lowercase", False),
    ("Blue.", "one_word", True), ("light blue", "one_word", False),
    ("one two three", "max_words:3", True), ("one two three four", "max_words:3", False),
    ("don't stop", "max_words:2", True),  # contractions are one word
    ("one two", "min_words:3", False), ("a b c", "min_words:3", True),
    ("It is red. Done.", "max_sentences:1", False), ("It is red.", "max_sentences:1", True),
    ("abcde", "max_chars:5", True), ("abcdef", "max_chars:5", False),
    ("Yes, it is red.", "start_with:yes", True), ("It is red.", "start_with:yes", False),
    ("The count is three, done.", "end_with:done", True),
    ("The count is three. DONE!", "end_with:done", True),
    ("done with it", "end_with:done", False),
    ("a red circle", "contains:red", True), ("a blue circle", "contains:red", False),
    ("a blue circle", "excludes:red", True), ("a red circle", "excludes:red", False),
    ("red and blue", "no_commas", True), ("red, blue", "no_commas", False),
    ("red，blue", "no_commas", False),
    (" 42 ", "number_only", True), ("-3.5", "number_only", True),
    ("42 apples", "number_only", False),
])
def test_checkers(text, instruction, ok):
  assert check_instruction(text, instruction) is ok


def test_parse_instruction():
  assert parse_instruction("max_words:5") == ("max_words", "5")
  assert parse_instruction(" end_with: all done ") == ("end_with", "all done")
  assert parse_instruction("uppercase") == ("uppercase", None)


def test_bad_instructions_name_the_problem():
  with pytest.raises(KeyError, match="unknown instruction checker 'shout'; known: .*uppercase"):
    check_instruction("x", "shout")
  with pytest.raises(ValueError, match="'max_words' needs a non-negative integer argument"):
    check_instruction("x", "max_words:many")
  with pytest.raises(ValueError, match="'uppercase' takes no argument"):
    check_instruction("X", "uppercase:yes")
  with pytest.raises(ValueError, match="'end_with' needs a text argument"):
    check_instruction("x", "end_with")


def _palindrome(text, arg):
  del arg
  return text == text[::-1]


def test_registry_is_extensible():
  assert {"uppercase", "max_words", "end_with", "one_word"} <= set(INSTRUCTION_CHECKERS)
  INSTRUCTION_CHECKERS.register("test_only_palindrome")(_palindrome)
  assert check_instruction("abba", "test_only_palindrome")
  assert not check_instruction("abc", "test_only_palindrome")


def test_instruction_following_reward():
  fn = make_reward_function("instruction_following")
  ex = make_example("instruction", instructions=("uppercase", "max_words:2", "end_with:done"))
  completions = [vt("d", "t", "ALL DONE"),        # 3/3
                 vt("d", "t", "ALL DONE NOW"),    # uppercase only: 1/3
                 vt("d", "t", "all done"),        # 2/3
                 "<answer>ALL DONE</answer><answer>x</answer>"]  # no readable answer
  assert fn(completions, [ex] * 4).tolist() == pytest.approx([1.0, 1 / 3, 2 / 3, 0.0])
  strict = make_reward_function({"fn": "instruction_following", "kwargs": {"aggregate": "all"}})
  assert strict(completions[:3], [ex] * 3).tolist() == [1.0, 0.0, 0.0]
  assert math.isnan(fn(["x"], [make_example()])[0])


def test_instruction_following_requires_the_content_word():
  fn = make_reward_function("instruction_following")
  ex = make_example("instruction", instructions=("uppercase",), ground_truth="green",
                    answer_type="word")
  # Both follow the format; only the first says the right colour.
  scores = fn([vt("d", "t", "THE CIRCLE IS GREEN"), vt("d", "t", "THE CIRCLE IS BLUE")], [ex] * 2)
  assert scores.tolist() == [1.0, 0.0]
  lenient = make_reward_function({"fn": "instruction_following",
                                  "kwargs": {"require_answer": False}})
  assert lenient([vt("d", "t", "THE CIRCLE IS BLUE")], [ex]).tolist() == [1.0]
