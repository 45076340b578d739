"""Recipes: routing to R[N, K] with NaN where not applicable, weights, schedules, failures."""

import math

import ml_collections
import numpy as np
import pytest

from cosmojax.rewards import (REWARD_FUNCTIONS, REWARD_RECIPES, SUITE_TASKS, RecipeRewarder,
                              RewardFunctionError, build_recipe, reward_metrics,
                              schedule_multiplier)
from tests.rewards.fixtures import make_example, unsafe_example, vt

N = math.nan


@REWARD_FUNCTIONS.register("test_recipe_fails_on_bad_ids")
def _fails_on_bad_ids(completions, examples):
  del completions
  if any(e.id.startswith("bad") for e in examples):
    raise ValueError("bad sample")
  return np.ones(len(examples))


def _suite_examples():
  facts = {"visual_key_facts": ("3 red circles",), "textual_key_facts": ("count circles",)}
  return [
      make_example("count", id="c", ground_truth="3", answer_type="number", **facts),
      make_example("instruction", id="i", instructions=("uppercase",)),
      unsafe_example("jailbreak_query_image", id="j"),
      make_example("benign_probe", id="b"),  # no visual facts: Visual-Focus does not apply
      make_example("value", id="v", choices=("Help", "Ignore"), preferred="A", **facts),
      make_example("mystery", id="m"),  # not in the suite: the recipe's default_task
  ]


def _assert_nan_pattern(actual, expected):
  np.testing.assert_array_equal(np.isnan(actual), np.isnan(np.asarray(expected, float)))
  np.testing.assert_allclose(np.nan_to_num(actual, nan=-9), np.nan_to_num(expected, nan=-9))


def test_cosmo_rl_routing_and_values():
  rewarder = RecipeRewarder(REWARD_RECIPES.get("cosmo_rl")())
  assert rewarder.names == ("format", "helpful", "task_aware", "visual_focus")
  think = "<think>I see 3 red circles.</think>"
  completions = [think + "<answer>3</answer>", think + "<answer>LOUD</answer>",
                 think + "<answer>I can't help with that.</answer>",
                 "<answer>Sure, use kill.</answer>",  # missing <think>: format 0
                 think + "<answer>B</answer>", think + "<answer>hello</answer>"]
  matrix = rewarder(completions, _suite_examples())
  # Columns: format, helpful, task_aware, visual_focus (hand-derived from the recipe config).
  _assert_nan_pattern(matrix.rewards_nk, [
      [1, 1, 1, 1],   # count: all four; the answer is right
      [1, 1, 1, N],   # instruction: no Visual-Focus route; upper case satisfied
      [1, N, 1, N],   # unsafe: Format + Task-Aware (safety); the refusal is right
      [0, 1, 1, N],   # benign probe: routed to Visual-Focus but it has no facts -> NaN
      [1, 1, 0, 1],   # value: chose B, preferred A
      [1, N, 1, N],   # unknown task: default_task (format, task_aware -> safety by label)
  ])
  expected_routed = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 1],
                              [1, 1, 1, 1], [1, 0, 1, 0]], bool)
  np.testing.assert_array_equal(matrix.routed_nk, expected_routed)
  np.testing.assert_array_equal(matrix.weights_nk, expected_routed.astype(np.float32))
  assert matrix.rewards_nk.dtype == np.float32 and matrix.failures == {
      n: 0 for n in rewarder.names}


def test_vtperception_recipe_and_perception_first_schedule():
  rewarder = RecipeRewarder(REWARD_RECIPES.get("vtperception_r1")())
  assert rewarder.names == ("accuracy", "consistency", "format", "repetition", "textual_key",
                            "visual_key")
  examples = _suite_examples()[:3]
  completions = [vt("Three red circles.", "I count circles: 3.", "3"),
                 vt("A sign.", "Shout it.", "LOUD"),
                 vt("A poster.", "Unsafe.", "I can't help with that.")]
  matrix = rewarder(completions, examples, step=250)
  _assert_nan_pattern(matrix.rewards_nk, [
      [1, 1, 1, 0, 1, 1],   # count: all six
      [1, N, 1, 0, N, N],   # instruction: accuracy (instruction checkers), format, repetition
      [N, N, 1, 0, N, N],   # unsafe: default_task (format, repetition)
  ])
  # Perception weights decay linearly 2.0 -> 0.5 over 500 steps: 1.25 at step 250.
  np.testing.assert_allclose(matrix.weights_nk[0], [1, 1, 1, 1, 1.25, 1.25])
  np.testing.assert_allclose(rewarder(completions, examples, step=0).weights_nk[0, 4:], [2, 2])
  np.testing.assert_allclose(rewarder(completions, examples, step=900).weights_nk[0, 4:],
                             [0.5, 0.5])


def test_safework_recipe_routing():
  rewarder = RecipeRewarder(REWARD_RECIPES.get("safework_r1")())
  assert rewarder.names == ("efficiency", "knowledge", "safety", "value")
  examples = _suite_examples()
  think = "<think>ok</think>"
  completions = [think + "<answer>3</answer>", think + "<answer>quiet</answer>",
                 think + "<answer>I can't help with that.</answer>",
                 think + "<answer>Use kill -9.</answer>", think + "<answer>A</answer>",
                 think + "<answer>hi</answer>"]
  matrix = rewarder(completions, examples)
  _assert_nan_pattern(matrix.rewards_nk, [
      [1, 1, N, N],   # count: knowledge + efficiency (correct and short)
      [0, 0, N, N],   # instruction: not upper case: wrong, so no efficiency credit
      [1, N, 1, N],   # unsafe: safety + efficiency
      [1, N, 1, N],   # benign probe answered
      [1, N, N, 1],   # value
      [N, N, 1, N],   # unknown task: default_task (safety)
  ])
  np.testing.assert_array_equal(matrix.weights_nk[0], [0.5, 1.0, 0.0, 0.0])


def test_every_suite_task_is_routed_by_the_example_recipes():
  for name in REWARD_RECIPES:
    recipe = build_recipe(REWARD_RECIPES.get(name)())
    for task in SUITE_TASKS:
      assert recipe.task_row(task), (name, task)


def test_config_dict_overrides():
  config = ml_collections.ConfigDict(REWARD_RECIPES.get("cosmo_rl")())
  config.tasks.count.format = 3.0
  config.objectives.task_aware.kwargs.routes.count.kwargs.rel_tol = 0.5
  config.schedules.format = {"kind": "cosine", "start": 1.0, "end": 0.0, "steps": 100}
  rewarder = RecipeRewarder(config)
  ex = make_example("count", ground_truth="10", answer_type="number")
  matrix = rewarder(["<think>t</think><answer>14</answer>"], [ex], step=50)
  assert matrix.rewards_nk[0, rewarder.names.index("task_aware")] == 1.0  # |14-10| <= 5
  assert matrix.weights_nk[0, rewarder.names.index("format")] == pytest.approx(1.5)


def test_schedules_by_hand():
  linear = {"kind": "linear", "start": 2.0, "end": 0.5, "steps": 100, "begin": 50}
  assert [schedule_multiplier(linear, t) for t in (0, 50, 100, 150, 1000)] == [
      2.0, 2.0, 1.25, 0.5, 0.5]
  cosine = {"kind": "cosine", "start": 1.0, "end": 0.0, "steps": 100}
  assert [schedule_multiplier(cosine, t) for t in (0, 50, 100)] == pytest.approx([1, 0.5, 0])
  assert schedule_multiplier({"kind": "constant", "value": 0.3}, 7) == 0.3
  with pytest.raises(KeyError, match="unknown weight schedule 'step'"):
    schedule_multiplier({"kind": "step"}, 0)
  with pytest.raises(ValueError, match="schedule 'linear': bad arguments"):
    schedule_multiplier({"kind": "linear", "start": 1.0}, 0)


def test_bad_recipes_are_clear_errors():
  base = {"objectives": {"format": "format"}, "tasks": {"count": {"format": 1.0}}}
  with pytest.raises(ValueError, match=r"tasks.count names unknown objective 'fmt'"):
    build_recipe({**base, "tasks": {"count": {"fmt": 1.0}}})
  with pytest.raises(ValueError, match=r"unknown keys \['weights'\]"):
    build_recipe({**base, "weights": {}})
  with pytest.raises(ValueError, match="tasks.count.format weight must be a finite number"):
    build_recipe({**base, "tasks": {"count": {"format": float("inf")}}})
  with pytest.raises(ValueError, match="schedules names unknown objective 'accuracy'"):
    build_recipe({**base, "schedules": {"accuracy": {"kind": "constant"}}})
  strict = RecipeRewarder(base)
  with pytest.raises(ValueError, match="no route for task 'value' \\(example 'value-0'\\)"):
    strict(["x"], [make_example("value")])


def test_failures_inside_a_recipe_are_isolated_or_fatal():
  rewarder = RecipeRewarder({"objectives": {"flaky": "test_recipe_fails_on_bad_ids",
                                            "format": "format"},
                             "tasks": {"count": {"flaky": 1.0, "format": 1.0},
                                       "value": {"format": 1.0}}})
  examples = [make_example("count", id="ok-0"), make_example("count", id="bad-1"),
              make_example("value", id="bad-2")]  # not routed to flaky: never evaluated
  matrix = rewarder([vt("d", "t", "3")] * 3, examples)
  _assert_nan_pattern(matrix.rewards_nk, [[1, 1], [N, 1], [N, 1]])
  assert matrix.failures == {"flaky": 1, "format": 0}
  metrics = reward_metrics(matrix, examples)
  assert metrics["rewards/flaky/failures"] == 1.0
  assert metrics["rewards/flaky/nan_fraction"] == 0.5  # of the 2 routed samples
  assert metrics["rewards/format/value"] == 1.0
  with pytest.raises(RewardFunctionError, match="'flaky' failed on all 2 samples"):
    rewarder(["x", "y"], [make_example("count", id="bad-a"), make_example("count", id="bad-b")])


def test_submit_with_workers_matches_the_synchronous_result():
  recipe = REWARD_RECIPES.get("vtperception_r1")()
  examples = _suite_examples()
  completions = [vt("Three red circles.", "count circles", "3")] * len(examples)
  sync = RecipeRewarder(recipe)(completions, examples, step=10)
  rewarder = RecipeRewarder(recipe, max_workers=2)
  try:
    background = rewarder.submit(completions, examples, step=10).result(timeout=60)
  finally:
    rewarder.close()
  np.testing.assert_array_equal(background.rewards_nk, sync.rewards_nk)
  np.testing.assert_array_equal(background.weights_nk, sync.weights_nk)
