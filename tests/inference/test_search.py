"""Deliberative search with step-level verification on a tiny random policy."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest

from cosmojax import inference
from tests.inference.conftest import BATCH, SAMPLED_STEP, direct_scores, prompt_ids

SEARCH = inference.SearchConfig(SAMPLED_STEP, beam_width=2, num_candidates=3,
                                aggregation="sum")


def prefers_this(examples, texts):
  """Scripted verifier: +1 per occurrence of the word "this"."""
  return np.array([float(t.count("this")) for t in texts])


def penalizes_request(examples, texts):
  """Scripted verifier: -1 per occurrence of the word "request" (the greedy favourite)."""
  return np.array([-float(t.count("request")) for t in texts])


AGGREGATE = {"sum": sum, "last": lambda s: s[-1], "mean": lambda s: sum(s) / len(s),
             "min": min}


def check_trace(result, scorer, config):
  """Recomputes every pool entry of every round from the scorer and the parent it extends,
  and the kept beams from the aggregate scores; returns the final kept candidates."""
  example, prev, prev_ids = result.example, [], []
  for r, rnd in enumerate(result.trace):
    assert rnd.round == r
    ids, seen = [], set()
    for c in rnd.candidates:
      if c.carried:
        assert c.stop_reason and dataclasses.replace(c, parent=-1, carried=False) == \
            dataclasses.replace(prev[c.parent], parent=-1, carried=False, duplicate=False)
        ids.append(prev_ids[c.parent])
      else:
        parent = prev[c.parent] if r else None
        assert c.parent == -1 if r == 0 else 0 <= c.parent < len(prev)
        assert parent is None or not parent.stop_reason  # only open beams are expanded
        assert c.response == (parent.response if parent else "") + c.step.text
        verified = float(scorer([example], [c.response])[0])
        assert c.step_scores == (parent.step_scores if parent else ()) + (verified,)
        assert c.step.score == verified and len(c.step_scores) == r + 1
        ids.append((prev_ids[c.parent] if r else ()) + c.step.token_ids)
      assert c.score == pytest.approx(AGGREGATE[config.aggregation](c.step_scores), abs=1e-5)
      assert c.duplicate == (ids[-1] in seen)
      seen.add(ids[-1])
    valid = [i for i, c in enumerate(rnd.candidates) if not (config.dedup and c.duplicate)]
    ranked = sorted(valid, key=lambda i: (-rnd.candidates[i].score, i))
    assert rnd.kept == tuple(ranked[:config.beam_width])
    prev = [rnd.candidates[i] for i in rnd.kept]
    prev_ids = [ids[i] for i in rnd.kept]
  assert all(c.stop_reason for c in prev)
  assert result.response == prev[0].response and result.token_ids == prev_ids[0]
  assert result.score == prev[0].score and result.stop_reason == prev[0].stop_reason
  assert tuple(s.score for s in result.steps) == prev[0].step_scores
  return prev


@pytest.fixture(scope="module")
def searched(engine, prompts, examples):
  return inference.deliberate(engine, prompts, examples, SEARCH, prefers_this,
                              jax.random.key(0))


def test_search_trace_is_consistent(searched):
  for result in searched:
    check_trace(result, prefers_this, SEARCH)
    assert len(result.trace) == len(result.steps)


def test_without_pruning_search_returns_the_verifiers_favourite(engine, prompts, examples):
  """beam_width = K and two steps keep every sampled response: the result is the best of
  all of them under the verifier."""
  config = inference.SearchConfig(dataclasses.replace(SAMPLED_STEP, max_steps=2),
                                  beam_width=3, num_candidates=3, aggregation="last")
  for result in inference.deliberate(engine, prompts, examples, config, prefers_this,
                                     jax.random.key(4)):
    check_trace(result, prefers_this, config)
    first, last = result.trace
    leaves = [c for c in first.candidates if c.stop_reason] + list(last.candidates)
    assert len(first.kept) == len([c for c in first.candidates if not c.duplicate])
    assert result.score == max(prefers_this(None, [c.response for c in leaves]))


def test_finished_beams_are_carried_and_early_stop_ends_at_the_best(engine, prompts,
                                                                     examples):
  """With "this" as a final delimiter, the preferred candidates close the answer early: they
  are carried into later pools unchanged, or end the search at once with early_stop."""
  config = dataclasses.replace(
      SEARCH, step=dataclasses.replace(SAMPLED_STEP, final_delimiters=("this",)))
  results = inference.deliberate(engine, prompts, examples, config, prefers_this,
                                 jax.random.key(0))
  carried = 0
  for result in results:
    check_trace(result, prefers_this, config)
    carried += sum(c.carried for rnd in result.trace for c in rnd.candidates)
    assert all(s.ending != "final" for s in result.steps[:-1])
  assert carried > 0 and any(r.stop_reason == "answer" for r in results)
  early = inference.deliberate(engine, prompts, examples,
                               dataclasses.replace(config, early_stop=True), prefers_this,
                               jax.random.key(0))
  shorter = 0
  for e, result in zip(early, results):
    best = [rnd.candidates[rnd.kept[0]] for rnd in e.trace]
    assert best[-1].stop_reason and not any(b.stop_reason for b in best[:-1])
    assert e.response == best[-1].response and e.trace[0] == result.trace[0]
    shorter += len(e.trace) < len(result.trace)
  assert shorter > 0


@pytest.mark.parametrize("scorer", [prefers_this, penalizes_request])
def test_search_is_at_least_as_good_as_greedy_and_plain_sampling(
    scorer, engine, prompts, examples, oneshot_greedy, tokenizer):
  config = dataclasses.replace(SEARCH, aggregation="last")  # the verifier's score of it all
  searched = inference.deliberate(engine, prompts, examples, config, scorer,
                                  jax.random.key(0))
  plain = inference.deliberate(engine, prompts, examples,
                               dataclasses.replace(config, beam_width=1, num_candidates=1),
                               scorer, jax.random.key(0))
  greedy = scorer(examples, [tokenizer.decode(ids) for ids in oneshot_greedy])
  found = np.array([r.score for r in searched])
  np.testing.assert_array_equal(found, scorer(examples, [r.response for r in searched]))
  assert np.all(found >= greedy) and np.any(found > greedy), (found, greedy)
  assert np.all(found >= [r.score for r in plain])


def test_beam_width_one_and_one_candidate_is_stepwise_sampling(engine, prompts, examples):
  config = dataclasses.replace(SEARCH, beam_width=1, num_candidates=1)
  searched = inference.deliberate(engine, prompts, examples, config, prefers_this,
                                  jax.random.key(5))
  stepwise = inference.deliberate(
      engine, prompts, examples, inference.InterventionConfig(SAMPLED_STEP, threshold=-math.inf),
      prefers_this, jax.random.key(5))
  for s, w in zip(searched, stepwise):
    assert s.token_ids == w.token_ids and s.steps == w.steps and s.response == w.response
    assert s.stop_reason == w.stop_reason
    assert [len(r.candidates) for r in s.trace] == [1] * len(s.steps)


def test_search_is_deterministic_for_a_fixed_key(engine, prompts, examples, searched):
  again = inference.deliberate(engine, prompts, examples, SEARCH, prefers_this,
                               jax.random.key(0))
  assert again == searched
  other = inference.deliberate(engine, prompts, examples, SEARCH, prefers_this,
                               jax.random.key(1))
  assert [r.token_ids for r in other] != [r.token_ids for r in searched]


def test_search_rejects_bad_configurations(engine, prompts, examples):
  with pytest.raises(ValueError, match="greedy steps give num_candidates identical"):
    inference.SearchConfig(dataclasses.replace(SAMPLED_STEP, greedy=True), num_candidates=2)
  with pytest.raises(ValueError, match="aggregation 'max'"):
    inference.SearchConfig(aggregation="max")
  with pytest.raises(ValueError, match="hook applies to guided generation"):
    inference.deliberate(engine, prompts, examples, SEARCH, prefers_this, jax.random.key(0),
                         hook=lambda e, s, p: None)
  with pytest.raises(ValueError, match="needs a step scorer"):
    inference.deliberate(engine, prompts, examples, SEARCH, None, jax.random.key(0))


def test_value_model_verifies_search_end_to_end(engine, prompts, examples, tokenizer,
                                                value_model):
  scorer = inference.ValueModelScorer(value_model, tokenizer, batch_size=BATCH,
                                      length_buckets=(64,))
  config = dataclasses.replace(SEARCH, aggregation="last")
  results = inference.deliberate(engine, prompts, examples, config, scorer, jax.random.key(6))
  rows, scores = [], []
  for result in results:
    final = check_trace(result, scorer, config)
    assert len(final) == config.beam_width and 0 < len(result.steps) <= 3
    prefix = ""
    for step in result.steps:
      prefix += step.text
      rows.append(prompt_ids(tokenizer, result.example)
                  + tokenizer.encode(prefix, add_special_tokens=False))
      scores.append(step.score)
  # Independent values: the value head of each hand-built row at its last token.
  np.testing.assert_allclose(scores, direct_scores(value_model, rows), rtol=1e-5, atol=1e-6)
