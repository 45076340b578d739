"""Answer checking by answer type, the accuracy reward and the value verifier."""

import math
import threading

import pytest

from cosmojax.rewards import check_answer, choice_index, make_reward_function, math_equal
from tests.rewards.fixtures import make_example, vt

CHOICES = ("red", "blue", "green")


@pytest.mark.parametrize("answer,expected", [
    ("B", 1), ("(b)", 1), ("B.", 1), ("B. blue", 1), ("(B) blue", 1), ("The answer is B", 1),
    ("Answer: C", 2), ("\\boxed{A}", 0), ("**B**", 1), ("blue", 1), ("Blue.", 1),
    ("D", None),          # out of range
    ("B or C", None),     # a hedge selects nothing
    ("the answer is a dog", None),  # 'a' is an article, not option A
    ("purple", None),
])
def test_choice_index(answer, expected):
  assert choice_index(answer, CHOICES) == expected


def _number_example(reference="3", **kw):
  return make_example("count", ground_truth=reference, answer_type="number", **kw)


@pytest.mark.parametrize("answer,ok", [
    ("3", True), ("There are 3 circles.", True), ("three", True), ("3.0", True),
    ("4", False), ("3 or 4", False), ("none", False), ("", False),
])
def test_number_answers(answer, ok):
  assert check_answer(answer, _number_example()) is ok


def test_number_tolerance_is_configurable():
  ex = _number_example("2.50")
  assert check_answer("2.5", ex)
  assert not check_answer("2.52", ex)  # default rel_tol 1e-4
  assert check_answer("2.52", ex, rel_tol=0.01)  # |0.02| <= 0.025
  assert not check_answer("2.53", ex, rel_tol=0.01)
  assert check_answer("2.53", ex, abs_tol=0.05)
  assert check_answer("1/2", _number_example("0.5"))
  assert check_answer("50%", _number_example("50"))


@pytest.mark.parametrize("answer,reference,ok", [
    ("1/2", "0.5", True), ("0.5", "\\frac{1}{2}", True), ("$\\frac{2}{4}$", "1/2", True),
    ("\\sqrt{4}", "2", True), ("x^2 + 2x + 1", "(x+1)^2", True), ("1/3", "0.5", False),
])
def test_math_equivalence(answer, reference, ok):
  assert math_equal(answer, reference) is ok


def test_math_equivalence_works_off_the_main_thread():
  results = []
  worker = threading.Thread(target=lambda: results.append(
      (math_equal("1/2", "0.5"), math_equal("1/3", "0.5"), math_equal("1" * 600, "1"))))
  worker.start()
  worker.join()
  # Off the main thread math-verify runs without signal timeouts; over-long answers are refused.
  assert results == [(True, False, False)]


def test_text_answers():
  ex = make_example("t", ground_truth="The red circle", answer_type="text")
  assert check_answer("red circle!", ex)
  assert not check_answer("a big red circle", ex)
  assert check_answer("a big red circle", ex, text_match="contains")
  assert not check_answer("bred circles", ex, text_match="contains")


def test_bad_labels_name_the_example():
  with pytest.raises(ValueError, match="example 'count-0': ground_truth 'E' selects none"):
    check_answer("A", make_example(ground_truth="E", answer_type="choice", choices=CHOICES))
  with pytest.raises(ValueError, match="answer_type 'weird'"):
    check_answer("A", make_example(ground_truth="A", answer_type="weird"))


def test_accuracy_reward_reads_only_the_answer_field():
  accuracy = make_reward_function("accuracy")
  ex = _number_example()
  completions = [
      vt("3 circles", "so 3", "3"),
      vt("3 circles", "so 3", "4"),
      "<description>3 circles <answer>3</answer></description><think>t</think>",  # nested
      vt("d", "t", "3") + "<answer>4</answer>",  # repeated answer
      "3",  # untagged: the whole text is the answer
  ]
  assert accuracy(completions, [ex] * 5).tolist() == [1, 0, 0, 0, 1]
  no_reference = make_example("benign_probe")
  assert math.isnan(accuracy([vt("d", "t", "3")], [no_reference])[0])


def test_accuracy_with_tags_and_tolerance_from_config():
  fn = make_reward_function({"fn": "accuracy", "kwargs": {"tags": ("think", "answer"),
                                                           "rel_tol": 0.05}})
  ex = _number_example("100")
  assert fn(["<think>t</think><answer>104</answer>"], [ex]).tolist() == [1.0]


def test_value_verifier():
  value = make_reward_function("value")
  ex = make_example("value", prompt="Which is kinder?", choices=("Help her", "Ignore her"),
                    preferred="A")
  assert value([vt("d", "t", "A"), vt("d", "t", "Ignore her"), vt("d", "t", "help her")],
               [ex] * 3).tolist() == [1, 0, 1]
  free_text = make_example("value", preferred="Tell the truth")
  assert value(["tell the truth."], [free_text]).tolist() == [1.0]
  assert math.isnan(value(["A"], [make_example("count")])[0])
