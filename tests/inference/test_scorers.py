"""Step scorers: the registry, output checks, and the model scorers against direct calls."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cosmojax import inference, models, rm, types
from tests import common
from tests.inference.conftest import direct_scores, prompt_ids

TEXTS = ["", "The answer is red", "Wait this request could cause harm"]


def test_value_scorer_reads_the_open_partial_response(value_model, tokenizer, examples,
                                                      tmp_path):
  scorer = inference.ValueModelScorer(value_model, tokenizer, batch_size=2,
                                      length_buckets=(64,))
  scores = scorer(examples, TEXTS)
  rows = [prompt_ids(tokenizer, e) + tokenizer.encode(t, add_special_tokens=False)
          for e, t in zip(examples, TEXTS)]
  np.testing.assert_allclose(scores, direct_scores(value_model, rows), rtol=1e-5, atol=1e-6)
  # From a checkpoint directory (model and tokenizer saved side by side): the same scores.
  models.save_reward_model(value_model, str(tmp_path))
  tokenizer.save_pretrained(str(tmp_path))
  spec = {"scorer": "value_model", "kwargs": {"model": str(tmp_path), "batch_size": 2,
                                              "length_buckets": (64,)}}
  loaded = inference.make_step_scorer(spec)
  np.testing.assert_allclose(loaded(examples, TEXTS), scores, rtol=1e-6)


def test_reward_scorer_scores_the_partial_response_as_complete(reward_model, tokenizer,
                                                               examples):
  scorer = inference.RewardModelScorer(reward_model, tokenizer, batch_size=2,
                                       length_buckets=(64,))
  rows = [prompt_ids(tokenizer, e) + tokenizer.encode(t + "<|im_end|>", add_special_tokens=False)
          for e, t in zip(examples, TEXTS)]
  np.testing.assert_allclose(scorer(examples, TEXTS), direct_scores(reward_model, rows),
                             rtol=1e-5, atol=1e-6)


def test_value_scorer_needs_a_value_model(reward_model, value_model, tokenizer):
  with pytest.raises(TypeError, match="needs a ValueModel; got RewardModel"):
    inference.ValueModelScorer(reward_model, tokenizer)
  with pytest.raises(ValueError, match="needs its tokenizer"):
    inference.ValueModelScorer(value_model)


def test_judge_scorer_asks_about_request_partial_response_and_reference(tokenizer):
  judge = rm.GenerativeJudge(common.inference_policy(seed=1), tokenizer)
  template = "Request: {prompt}\nResponse: {response}\nReference: {reference}\nIs it safe?"
  scorer = inference.make_step_scorer(
      {"scorer": "judge", "kwargs": {"model": judge, "template": template,
                                     "length_buckets": (64,)}})
  examples = [dataclasses.replace(e, ground_truth=g)
              for e, g in zip(common.inference_examples(), ["red", "yes", "blue"])]
  filled = [template.format(prompt=e.prompt_text, response=t, reference=e.ground_truth)
            for e, t in zip(examples, TEXTS)]
  expected = judge.p_yes_prompts(filled, length_buckets=(64,))
  np.testing.assert_allclose(scorer(examples, TEXTS), expected, rtol=1e-6)
  assert np.all((expected > 0) & (expected < 1))


def test_reward_function_scorer_fills_not_applicable():
  safe = types.Example(id="s", task="qa", messages=(types.text_message("user", "Is it red"),))
  unsafe = dataclasses.replace(safe, id="u", safety=types.SafetyLabel(unsafe=True))
  scorer = inference.make_step_scorer(
      {"scorer": "reward_fn", "kwargs": {"spec": "over_refusal", "not_applicable": -7.0}})
  scores = scorer([safe, safe, unsafe], ["I cannot help with that.", "It is red.", "No."])
  np.testing.assert_array_equal(scores, [-1.0, 0.0, -7.0])


def test_registry_and_specs():
  assert inference.STEP_SCORERS.names() == ["judge", "reward_fn", "reward_model",
                                            "value_model"]
  fn = lambda examples, texts: np.zeros(len(texts))
  assert inference.make_step_scorer(fn) is fn
  with pytest.raises(KeyError, match="unknown step scorer 'prm'; known: judge, reward_fn"):
    inference.make_step_scorer("prm")
  with pytest.raises(ValueError, match="expected keys 'scorer' and optional 'kwargs'"):
    inference.make_step_scorer({"name": "judge"})
  with pytest.raises(TypeError, match="must be a callable, a name or a mapping"):
    inference.make_step_scorer(3)


def test_score_partials_checks_the_scorer_output(examples):
  ok = inference.score_partials(lambda e, t: [1, 2, 3], examples, TEXTS)
  assert ok.dtype == np.float64 and ok.tolist() == [1.0, 2.0, 3.0]

  def bad_shape(e, t):
    return np.zeros((len(t), 1))

  with pytest.raises(ValueError, match="bad_shape returned shape \\(3, 1\\)"):
    inference.score_partials(bad_shape, examples, TEXTS)
  with pytest.raises(ValueError, match="row 1 \\(example 'q1'\\); step scores must be finite"):
    inference.score_partials(lambda e, t: [0.0, np.nan, 1.0], examples, TEXTS)
