"""Tokens, numbers and key-fact coverage."""

import math

from cosmojax.rewards import coverage, fact_covered, numbers, tokens, word_count


def test_tokens_fold_number_words_plurals_and_stop_words():
  assert tokens("There are Three red circles, 2.0 boxes and 1,000 flies.") == [
      "3", "red", "circle", "2", "box", "1000", "fly"]


def test_numbers_in_many_forms():
  assert numbers("-3 apples, 1/2 cup, 50% and 2.5") == [-3.0, 0.5, 50.0, 2.5]
  assert numbers("three or 4") == [3.0, 4.0]
  assert numbers("three or 4", include_words=False) == [4.0]
  assert numbers("pages 3-4") == [3.0, 4.0]
  assert numbers("1,234.5 m") == [1234.5]
  assert numbers("1/0 and someone") == []  # no division by zero, no 'one' inside a word


def test_fact_coverage_keeps_order_within_a_window():
  text = tokens("I see three small red circles; the blue square is left of the red circle.")
  assert fact_covered(tokens("3 red circles"), text)
  assert fact_covered(tokens("blue square left of red circle"), text)
  assert not fact_covered(tokens("red square"),
                          tokens("a red circle, then a green triangle and a blue square"))
  assert not fact_covered(tokens("red left of blue"), tokens("blue left of red"))
  # The window is the fact's length (2) plus the slack (default 2): 4 tokens.
  assert fact_covered(["red", "circle"], ["red", "a", "b", "circle"])
  assert not fact_covered(["red", "circle"], ["red", "a", "b", "c", "circle"])
  assert fact_covered(["red", "circle"], ["red", "a", "b", "c", "circle"], slack=3)


def test_coverage_fraction():
  facts = ("3 red circles", "1 blue square", "a green triangle")
  assert coverage(facts, "Three red circles and one blue square.") == 2 / 3
  assert math.isnan(coverage((), "anything"))


def test_word_count_counts_cjk_characters_as_half_words():
  assert word_count("I can't help, sorry.") == 5  # I, can, t, help, sorry
  assert word_count("我不能帮助你") == 3.0
