"""Learned verifiers as reward functions: scores, NaN routing, failures, caching, recipes."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from cosmojax import models, rewards, rm, types
from cosmojax.rewards import learned
from tests import common

LENGTHS = (48, 96)
SHAPES = dict(batch_size=4, length_buckets=LENGTHS)


def _example(request, task="harmful_text", i=0, **fields):
  return types.Example(id=f"{task}-{i}", task=task, messages=(types.user_message(request),),
                       **fields)


HARMFUL = _example("How do I rob the car?", safety=types.SafetyLabel(unsafe=True))
BENIGN = _example("How do I wash the friend?", task="benign_probe", i=1)
REFUSAL, ANSWER = "I must decline this request.", "Of course: make a plan and begin today."


@pytest.fixture(scope="module")
def tok():
  return common.preference_tokenizer()


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tok):
  path = str(tmp_path_factory.mktemp("safety_rm"))
  models.save_reward_model(common.trained_preference_model()[0], path)
  tok.save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory, tok):
  path = str(tmp_path_factory.mktemp("judge"))
  config = models.tiny_qwen2_config(vocab_size=256, initializer_range=0.3)
  models.save_pretrained(models.Qwen2ForCausalLM(config, rngs=nnx.Rngs(2)), path)
  tok.save_pretrained(path)
  return path


@pytest.fixture(autouse=True)
def fresh_cache():
  learned.VERIFIER_CACHE.clear()
  yield
  learned.VERIFIER_CACHE.clear()


def _fn(kind, path, **kwargs):
  return rewards.make_reward_function(rewards.verifier_spec(kind, path, **SHAPES, **kwargs))


def test_reward_model_verifier_is_sigmoid_of_the_score(rm_dir, tok):
  examples = [HARMFUL, HARMFUL, BENIGN, BENIGN]
  completions = [REFUSAL, ANSWER, REFUSAL, ANSWER]
  got = _fn("safety", rm_dir)(completions, examples)
  scorer = rm.RewardScorer(common.trained_preference_model()[0], tok)
  raw = scorer([e.prompt_messages for e in examples], completions, **SHAPES)
  np.testing.assert_allclose(got, 1.0 / (1.0 + np.exp(-raw)), rtol=1e-6)
  # The trained rule: refuse the harmful request, answer the benign one.
  assert got[0] > 0.5 > got[1] and got[3] > 0.5 > got[2]
  thresholded = _fn("safety", rm_dir, threshold=0.5)(completions, examples)
  np.testing.assert_array_equal(thresholded, [1.0, 0.0, 0.0, 1.0])
  np.testing.assert_allclose(_fn("safety", rm_dir, transform="identity")(completions, examples),
                             raw, rtol=1e-6)


def test_judge_verifier_reads_p_yes_with_the_kind_template(judge_dir, tok):
  judge = rm.GenerativeJudge(models.from_pretrained(judge_dir), tok)
  examples = [HARMFUL, BENIGN]
  completions = [REFUSAL, ANSWER]
  requests = [e.prompt_text for e in examples]
  for kind in ("safety", "value"):
    want = judge(requests, completions, template=rewards.VERIFIER_TEMPLATES[kind], **SHAPES)
    got = _fn(kind, judge_dir, model="judge")(completions, examples)
    np.testing.assert_allclose(got, want, rtol=1e-6)
  raw = _fn("safety", judge_dir, model="judge", normalize=False, transform="one_minus")
  want = judge(requests, completions, normalize=False, **SHAPES)
  np.testing.assert_allclose(raw(completions, examples), 1.0 - want, rtol=1e-6)


def test_not_applicable_samples_get_nan_without_loading(rm_dir, judge_dir, tok):
  only_harmful = _fn("safety", rm_dir, tasks=("harmful_text",))
  values = only_harmful([REFUSAL, REFUSAL], [HARMFUL, BENIGN])
  assert np.isfinite(values[0]) and np.isnan(values[1])
  learned.VERIFIER_CACHE.clear()
  loads = learned.VERIFIER_CACHE.loads
  assert np.isnan(only_harmful([REFUSAL], [BENIGN])).all()
  assert learned.VERIFIER_CACHE.loads == loads  # nothing applicable: no model loaded
  # The knowledge judge names {reference}: examples without a ground truth are NaN.
  knowledge = _fn("knowledge", judge_dir, model="judge")
  with_answer = _example("How do I fix it?", task="count", i=2, ground_truth="3",
                         answer_type="number")
  values = knowledge(["3", "3"], [with_answer, BENIGN])
  assert np.isnan(values[1])
  judge = rm.GenerativeJudge(models.from_pretrained(judge_dir), tok)
  want = judge(["How do I fix it?"], ["3"], ["3"],
               template=rewards.VERIFIER_TEMPLATES["knowledge"], **SHAPES)
  np.testing.assert_allclose(values[:1], want, rtol=1e-6)


def test_models_are_loaded_once_per_directory(rm_dir, judge_dir, monkeypatch):
  calls = []
  original = learned.load_verifier

  def counting(*args):
    calls.append(args[:2])
    return original(*args)

  monkeypatch.setattr(learned, "load_verifier", counting)
  examples, completions = [HARMFUL, BENIGN], [REFUSAL, ANSWER]
  for kwargs in ({}, {"threshold": 0.3}, {"transform": "identity"}, {"tasks": ("benign_probe",)}):
    _fn("safety", rm_dir, **kwargs)(completions, examples)
  _fn("value", rm_dir)(completions, examples)
  assert calls == [(rm_dir, "reward_model")]
  recipe = {"objectives": {"safety": rewards.verifier_spec("safety", judge_dir, model="judge",
                                                           **SHAPES),
                           "value": rewards.verifier_spec("value", judge_dir, model="judge",
                                                          **SHAPES)},
            "tasks": {}, "default_task": {"safety": 1.0, "value": 1.0}, "strict_tasks": False}
  rewarder = rewards.RecipeRewarder(recipe, max_workers=2)  # both verifiers at once
  try:
    matrix = rewarder(completions, examples)
  finally:
    rewarder.close()
  assert np.isfinite(matrix.rewards_nk).all()
  assert calls == [(rm_dir, "reward_model"), (judge_dir, "judge")]


def test_failures_follow_the_reward_api(rm_dir, tmp_path):
  fn = _fn("safety", rm_dir)
  evaluator = rewards.RewardEvaluator([fn])
  examples = [HARMFUL, BENIGN, HARMFUL]
  results = evaluator.evaluate([REFUSAL, None, ANSWER], examples)  # a broken sample
  values = results.values["learned_verifier"]
  assert results.failures["learned_verifier"] == 1 and np.isnan(values[1])
  np.testing.assert_allclose(values[[0, 2]], fn([REFUSAL, ANSWER], [HARMFUL, HARMFUL]),
                             rtol=1e-6)
  missing = rewards.make_reward_function(
      rewards.verifier_spec("safety", str(tmp_path / "missing"), **SHAPES))
  with pytest.raises(rewards.RewardFunctionError, match="failed on all 2 samples"):
    rewards.RewardEvaluator([missing]).evaluate([REFUSAL, ANSWER], [HARMFUL, BENIGN])
  # A model that outputs NaN is broken: an error at once, not "not applicable".
  broken = common.tiny_reward_model(256)
  broken.head.bias.set_value(np.full(1, np.nan, np.float32))
  models.save_reward_model(broken, str(tmp_path / "nan"))
  common.preference_tokenizer().save_pretrained(str(tmp_path / "nan"))
  with pytest.raises(rewards.RewardFunctionError, match="non-finite scores"):
    rewards.RewardEvaluator([_fn("safety", str(tmp_path / "nan"))]).evaluate(
        [REFUSAL], [HARMFUL])


def test_images_are_dropped_the_verifier_sees_the_text(rm_dir):
  with_image = types.Example(id="img", task="harmful_text",
                             messages=(types.user_message("How do I rob the car?", 1),),
                             images=(common.tiny_image(),))
  fn = _fn("safety", rm_dir)
  np.testing.assert_array_equal(fn([REFUSAL], [with_image]), fn([REFUSAL], [HARMFUL]))


def test_specs_are_checked_when_built():
  with pytest.raises(ValueError, match="unknown verifier kind 'honesty'"):
    rewards.verifier_spec("honesty", "/x")
  with pytest.raises(ValueError, match="template applies to judges only"):
    rewards.verifier_spec("safety", "/x", template="{prompt}")
  with pytest.raises(KeyError, match="unknown score transform 'tanh'"):
    rewards.verifier_spec("safety", "/x", transform="tanh")
  with pytest.raises(ValueError, match="bad keyword arguments"):
    rewards.verifier_spec("safety", "/x", temperature=2.0)
  with pytest.raises(ValueError, match=r"unknown fields \['answer'\]"):
    rewards.verifier_spec("safety", "/x", model="judge", template="{answer}")
  with pytest.raises(ValueError, match="learned verifier model 'classifier'"):
    rewards.verifier_spec("safety", "/x", model="classifier")
  spec = rewards.verifier_spec("knowledge", "/x", model="judge")
  assert spec == {"fn": "learned_verifier", "kwargs": {
      "path": "/x", "model": "judge", "template": rewards.VERIFIER_TEMPLATES["knowledge"]}}
  assert "learned_verifier" in rewards.REWARD_FUNCTIONS
  # Defaults duplicated to keep `cosmojax.rewards` free of JAX imports agree with cosmojax.rm.
  assert (learned.DEFAULT_YES, learned.DEFAULT_NO) == (rm.DEFAULT_YES, rm.DEFAULT_NO)
  assert learned.DEFAULT_LENGTH_BUCKETS == rm.DEFAULT_LENGTH_BUCKETS


def test_task_aware_routes_to_a_learned_safety_verifier(rm_dir):
  spec = {"fn": "task_aware", "kwargs": {
      "safety": rewards.verifier_spec("safety", rm_dir, **SHAPES)}}
  count = _example("How many circles?", task="count", i=3, ground_truth="3",
                   answer_type="number")
  values = rewards.make_reward_function(spec)([REFUSAL, ANSWER, "3"], [HARMFUL, HARMFUL, count])
  direct = _fn("safety", rm_dir)([REFUSAL, ANSWER], [HARMFUL, HARMFUL])
  np.testing.assert_allclose(values[:2], direct, rtol=1e-6)
  assert values[2] == 1.0  # the count task goes to the rule-based accuracy verifier


def test_safework_recipe_with_learned_safety_and_value_verifiers(rm_dir, judge_dir):
  recipe = rewards.REWARD_RECIPES.get("safework_r1")(efficiency_weight=0.0)
  recipe["objectives"]["safety"] = rewards.verifier_spec("safety", rm_dir, **SHAPES)
  recipe["objectives"]["value"] = rewards.verifier_spec("value", judge_dir, model="judge",
                                                        **SHAPES)
  value_example = _example("How do I fix it?", task="value", i=4, preferred="A")
  examples = [HARMFUL, BENIGN, value_example]
  rewarder = rewards.RecipeRewarder(recipe)
  try:
    matrix = rewarder([REFUSAL, ANSWER, "A"], examples)
  finally:
    rewarder.close()
  safety, value = matrix.names.index("safety"), matrix.names.index("value")
  np.testing.assert_allclose(matrix.rewards_nk[:2, safety],
                             _fn("safety", rm_dir)([REFUSAL, ANSWER], [HARMFUL, BENIGN]),
                             rtol=1e-6)
  assert np.isnan(matrix.rewards_nk[2, safety]) and np.isnan(matrix.rewards_nk[:2, value]).all()
  assert 0.0 < matrix.rewards_nk[2, value] < 1.0
  assert matrix.failures == {name: 0 for name in matrix.names}
