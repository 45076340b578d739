"""Response parsing: whitespace-tolerant, strict about order, repetition and nesting."""

import pytest

from cosmojax.rewards import parse_response
from tests.rewards.fixtures import vt


def test_well_formed_exposes_the_three_fields():
  parsed = parse_response(vt("two dots", "count them", "2"))
  assert parsed.ok and parsed.problems == ()
  assert (parsed.description, parsed.think, parsed.answer) == ("two dots", "count them", "2")
  assert parsed.final_answer == "2"


def test_whitespace_and_case_are_tolerated():
  text = ("\n  < Description >\n two dots \n</description>\n\n<think> count </ think>"
          "  <ANSWER> 2 </answer>\n")
  parsed = parse_response(text)
  assert parsed.ok, parsed.problems
  assert (parsed.description, parsed.think, parsed.answer) == ("two dots", "count", "2")


def test_missing_tag_is_reported_and_others_still_read():
  parsed = parse_response("<description>d</description><answer>2</answer>")
  assert not parsed.ok
  assert "missing <think>" in parsed.problems
  assert parsed.description == "d" and parsed.think is None and parsed.answer == "2"


def test_repeated_answer_exposes_no_answer():
  parsed = parse_response(vt("d", "t", "2") + "<answer>3</answer>")
  assert parsed.answer is None
  assert any("<answer> repeated (2 opening, 2 closing" in p for p in parsed.problems)


def test_answer_inside_description_is_neither_field():
  parsed = parse_response("<description>3 dots <answer>3</answer></description>"
                          "<think>t</think>")
  assert parsed.answer is None and parsed.description is None
  assert "<answer> inside <description>" in parsed.problems
  assert parsed.final_answer is None


def test_out_of_order_tags():
  parsed = parse_response("<think>t</think><description>d</description><answer>2</answer>")
  assert parsed.problems == ("tags out of order: got think, description, answer; expected "
                             "description, think, answer",)


def test_text_outside_tags_and_unclosed_and_empty_fields():
  assert parse_response("Sure! " + vt("d", "t", "2")).problems[0].startswith(
      "text outside the tags: 'Sure!'")
  assert "<answer> is never closed" in parse_response(
      "<description>d</description><think>t</think><answer>2").problems
  assert "</think> comes before <think>" in parse_response(
      "<description>d</description></think>t<think><answer>2</answer>").problems
  assert "empty <think>" in parse_response(vt("d", "  ", "2")).problems


def test_untagged_response_is_a_plain_answer():
  parsed = parse_response("  The answer is 4.  ")
  assert not parsed.has_tags and not parsed.ok
  assert parsed.answer is None and parsed.final_answer == "The answer is 4."


def test_custom_tags():
  parsed = parse_response("<think>t</think><answer>B</answer>", tags=("think", "answer"))
  assert parsed.ok and parsed.answer == "B" and parsed.description is None
  with pytest.raises(KeyError, match="'description' is not one of the parsed tags"):
    parsed.field("description")
  with pytest.raises(ValueError, match="distinct"):
    parse_response("x", tags=("answer", "answer"))
