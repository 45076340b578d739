"""Value-guided intervention and human-in-the-loop correction on a tiny random policy."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from cosmojax import inference
from tests.inference.conftest import (BATCH, SAMPLED_STEP, direct_scores, hand_batch,
                                      prompt_ids)

PREFIX = "Wait this request could cause harm. "
MARKS = ".{&KRT=37"  # characters the scripted verifier penalizes
THRESHOLD = -0.5


def mark_scorer(examples, texts):
  """-1 per marked character, +10 per corrective prefix: a scripted step verifier."""
  assert len(examples) == len(texts)
  return np.array([10.0 * t.count(PREFIX) - sum(t.count(c) for c in MARKS) for t in texts])


def replay(result, scorer, threshold):
  """Checks every step's score and every intervention record against the scorer, step by
  step, from the texts alone. Returns the actions per step."""
  example, prefix, actions = result.example, "", []
  for k, step in enumerate(result.steps):
    score = lambda text: float(scorer([example], [prefix + text])[0])
    assert step.score == score(step.text)
    records = [r for r in result.interventions if r.step == k]
    actions.append(tuple(r.action for r in records))
    if not records:
      assert step.source == "model" and step.score >= threshold
    for r in records:
      assert r.score_before < threshold and r.score_before == score(r.proposed)
    if records and records[0].action == "resample":
      r = records[0]
      assert r.candidate_scores[0] == r.score_before
      assert r.score_after == max(r.candidate_scores)
      if len(records) == 1:
        assert r.score_after >= threshold and step.score == r.score_after
        assert step.source == ("model" if r.score_after == r.score_before else "resample")
    if records and records[-1].action == "corrective_prefix":
      assert step.text.startswith(PREFIX) and step.source == "corrective_prefix"
      assert records[-1].score_after == step.score
      if len(records) == 2:
        assert records[0].score_after < threshold
        assert records[1].score_before == records[0].score_after
    prefix += step.text
  assert result.response == prefix
  return actions


@pytest.fixture(scope="module")
def guided(engine, prompts, examples):
  config = inference.InterventionConfig(SAMPLED_STEP, threshold=THRESHOLD, max_resamples=1,
                                        corrective_prefix=PREFIX)
  return inference.deliberate(engine, prompts, examples, config, mark_scorer,
                              jax.random.key(1))


def test_interventions_trigger_exactly_below_the_threshold(guided):
  actions = [a for result in guided for a in replay(result, mark_scorer, THRESHOLD)]
  # The run covers all three cases: no intervention, a resample that fixed the step, and a
  # failed resample followed by the corrective prefix.
  assert () in actions
  assert ("resample",) in actions
  assert ("resample", "corrective_prefix") in actions


def test_the_corrective_prefix_is_in_the_response(guided):
  corrected = [(r, s) for r in guided for s in r.steps if s.source == "corrective_prefix"]
  assert corrected
  for result, step in corrected:
    assert PREFIX in result.response and step.text.startswith(PREFIX)


def test_first_step_is_intervened_on_iff_the_plain_step_scores_below(engine, prompts,
                                                                    examples, guided):
  """Round 0 proposals come from the same key with or without intervention: a plain run
  (threshold -inf) shows the proposals, and the guided run intervened on exactly those
  scored below the threshold."""
  plain = inference.deliberate(
      engine, prompts, examples,
      inference.InterventionConfig(SAMPLED_STEP, threshold=-math.inf), mark_scorer,
      jax.random.key(1))
  flagged = 0
  for p, g in zip(plain, guided):
    first = [r for r in g.interventions if r.step == 0]
    assert p.interventions == ()
    assert bool(first) == (p.steps[0].score < THRESHOLD)
    if first:
      flagged += 1
      assert first[0].proposed == p.steps[0].text
    else:
      assert g.steps[0] == p.steps[0]
  assert 0 < flagged < len(examples)


def test_max_interventions_and_a_forced_corrective_prefix(engine, prompts, examples):
  config = inference.InterventionConfig(SAMPLED_STEP, threshold=math.inf, max_resamples=0,
                                        corrective_prefix=PREFIX, max_interventions=2)
  for result in inference.deliberate(engine, prompts, examples, config, mark_scorer,
                                     jax.random.key(3)):
    assert [(r.step, r.action) for r in result.interventions] == [
        (0, "corrective_prefix"), (1, "corrective_prefix")][:len(result.steps)]
    assert result.response.count(PREFIX) == min(2, len(result.steps))
    assert [s.source for s in result.steps][:2] == ["corrective_prefix"] * min(
        2, len(result.steps))


def test_guided_without_scorer_needs_threshold_minus_inf(engine, prompts, examples):
  with pytest.raises(ValueError, match="cannot intervene"):
    inference.deliberate(engine, prompts, examples, inference.InterventionConfig(SAMPLED_STEP),
                         None, jax.random.key(0))


# --- human in the loop ---------------------------------------------------------------------

EDIT = " The answer is red"


class ScriptedHuman:
  """Replaces step `at` of every response with `text`; records every call."""

  def __init__(self, at: int, text: str):
    self.at, self.text, self.calls = at, text, []

  def __call__(self, example, steps_so_far, proposed):
    self.calls.append((example.id, steps_so_far, proposed))
    return self.text if len(steps_so_far) == self.at else None


def test_human_edits_replace_the_step_and_generation_continues_from_them(
    engine, prompts, examples, greedy_step, tokenizer):
  config = inference.InterventionConfig(greedy_step, threshold=-math.inf)
  plain = inference.deliberate(engine, prompts, examples, config, None, jax.random.key(0))
  human = ScriptedHuman(1, EDIT)
  edited = inference.deliberate(engine, prompts, examples, config, None, jax.random.key(0),
                                hook=human)
  continued_from = []
  for p, e in zip(plain, edited):
    assert len(p.steps) == 3 and p.stop_reason == "max_steps"  # no early end in this setup
    assert e.steps[0].token_ids == p.steps[0].token_ids
    assert e.edits == (inference.HumanEdit(1, p.steps[1].text, EDIT),)
    assert e.steps[1].text == EDIT and e.steps[1].source == "human"
    assert e.response == p.steps[0].text + EDIT + e.steps[2].text
    calls = [c for c in human.calls if c[0] == e.example.id]
    assert calls == [(e.example.id, (), p.steps[0].text),
                     (e.example.id, (p.steps[0].text,), p.steps[1].text),
                     (e.example.id, (p.steps[0].text, EDIT), e.steps[2].text)]
    continued_from.append(prompt_ids(tokenizer, e.example) + list(p.steps[0].token_ids)
                          + tokenizer.encode(EDIT, add_special_tokens=False))
  # Step 2 is the greedy step after prompt + step 0 + the edit, decoded here directly.
  batch = hand_batch(continued_from, prompts.formatter.image_processor.patch_dim)
  out = engine.generate(batch, jax.random.key(0), greedy_step.sampling(tokenizer, 1))
  tokens, lengths = np.asarray(out.completion_tokens), np.asarray(out.lengths)
  for i, e in enumerate(edited):
    expected = inference.split_step(tokens[i, :lengths[i]], tokenizer, greedy_step, (2, 0))
    assert e.steps[2].token_ids == expected.token_ids


def test_an_edit_with_a_final_delimiter_ends_the_response(engine, prompts, examples,
                                                           greedy_step):
  config = inference.InterventionConfig(greedy_step, threshold=-math.inf)
  answer = "<answer> red </answer>"
  results = inference.deliberate(engine, prompts, examples[:1], config, None,
                                 jax.random.key(0), hook=ScriptedHuman(0, answer))
  assert results[0].response == answer and results[0].stop_reason == "answer"
  assert results[0].steps[0].ending == "final"


def test_a_hook_returning_a_non_string_is_an_error(engine, prompts, examples, greedy_step):
  config = inference.InterventionConfig(greedy_step, threshold=-math.inf)
  with pytest.raises(TypeError, match="hook returned int for example 'q0' step 0"):
    inference.deliberate(engine, prompts, examples[:1], config, None, jax.random.key(0),
                         hook=lambda example, steps, proposed: 3)


# --- a real reward model as the step scorer -------------------------------------------------


def test_reward_model_scorer_resamples_every_step_end_to_end(engine, prompts, examples,
                                                             tokenizer, reward_model):
  scorer = inference.RewardModelScorer(reward_model, tokenizer, batch_size=BATCH,
                                       length_buckets=(64,))
  config = inference.InterventionConfig(SAMPLED_STEP, threshold=math.inf, max_resamples=3,
                                        corrective_prefix="")
  results = inference.deliberate(engine, prompts, examples, config, scorer, jax.random.key(2))
  rows, scores = [], []
  for result in results:
    assert len(result.interventions) == len(result.steps) > 0
    prefix = ""
    for step, record in zip(result.steps, result.interventions):
      assert len(record.candidate_scores) == 4
      assert step.score == record.score_after == max(record.candidate_scores)
      prefix += step.text
      rows.append(prompt_ids(tokenizer, result.example)
                  + tokenizer.encode(prefix + "<|im_end|>", add_special_tokens=False))
      scores.append(step.score)
  # Independent rewards: the reward head of each hand-built row at its last token.
  np.testing.assert_allclose(direct_scores(reward_model, rows), scores, rtol=1e-5, atol=1e-6)
