"""Deliberative search with step-level verification: beam search over reasoning steps.

SafeWork-R1's deliberative search: every example starts from one empty response. A round

  1. expands each open beam with K sampled next steps: one batched generate call with
     group_size = K over all open beams of all examples (`cosmojax.inference.steps`);
  2. scores every candidate partial response with the step verifier in one call; a
     candidate's step scores are its parent's plus the new one, and its aggregate score is
     their sum, mean, last or min (`SearchConfig.aggregation`, `selection`);
  3. per example, pools the finished beams carried over and the new candidates (duplicates
     of an earlier pool entry's tokens are dropped when `dedup`), and keeps the
     `beam_width` best by aggregate score (`selection.top_k_valid`, jitted over a static
     [examples, beam_width * (K + 1)] pool).

A beam is finished when its last step closed the answer (a final delimiter), ended with an
end-of-sequence token, reached `max_steps`, or leaves no room for another step in the
largest length bucket. An example's search ends when all its kept beams are finished, or,
with `early_stop`, as soon as its best kept beam is finished (the open ones are dropped);
the result is its best kept beam, with the rounds of the search as its trace.

Keys: round r expands with fold_in(fold_in(key, r), 0), as guided generation draws its
proposals, so beam_width = 1 and K = 1 is exactly step-wise sampling
(`guided_generate` without intervention).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from cosmojax import types
from cosmojax.inference import results
from cosmojax.inference import selection
from cosmojax.inference.scorers import StepScorer, score_partials
from cosmojax.inference.steps import PromptBuilder, StepConfig, decode, generate_steps
from cosmojax.rollout.base import RolloutEngine


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """Beam search over steps (module docstring).

  Attributes:
    step: step segmentation and sampling.
    beam_width: partial responses kept per example.
    num_candidates: K sampled next steps per beam and round.
    aggregation: how step scores rank a partial response (`selection.AGGREGATIONS`).
    dedup: drop candidates whose tokens equal an earlier pool entry's.
    early_stop: end an example's search once its best kept beam is finished.
  """

  step: StepConfig = StepConfig()
  beam_width: int = 4
  num_candidates: int = 4
  aggregation: str = "sum"
  dedup: bool = True
  early_stop: bool = False

  def __post_init__(self):
    if self.beam_width < 1 or self.num_candidates < 1:
      raise ValueError(f"SearchConfig: beam_width ({self.beam_width}) and num_candidates "
                       f"({self.num_candidates}) must be >= 1.")
    if self.aggregation not in selection.AGGREGATIONS:
      raise ValueError(f"SearchConfig.aggregation {self.aggregation!r}; known: "
                       f"{selection.AGGREGATIONS}")
    if self.step.greedy and self.num_candidates > 1:
      raise ValueError("SearchConfig: greedy steps give num_candidates identical candidates; "
                       "sample (greedy=False) or set num_candidates=1.")


@dataclasses.dataclass(frozen=True)
class _Beam:
  ids: tuple[int, ...] = ()
  steps: tuple[results.Step, ...] = ()
  stop_reason: str = ""
  score: float = 0.0


def _stop_reason(beam_ids, steps, ending, room, config: StepConfig) -> str:
  if ending in ("eos", "final"):
    return "eos" if ending == "eos" else "answer"
  if len(steps) >= config.max_steps:
    return "max_steps"
  return "length" if room - len(beam_ids) < config.max_step_tokens else ""


def _expand(engine, builder, prompts, examples, beams, config: SearchConfig, scorer, key):
  """The pool of every example with open beams: [(parent, carried, beam)] (scores unset)."""
  rows = [(e, b) for e, kept in enumerate(beams) for b, beam in enumerate(kept)
          if not beam.stop_reason]
  k = config.num_candidates
  samples = generate_steps(engine, builder, [prompts[e] for e, _ in rows],
                           [beams[e][b].ids for e, b in rows], config.step, k, key)
  tokenizer = builder.tokenizer
  ids = [beams[e][b].ids + s.token_ids for (e, b), row in zip(rows, samples) for s in row]
  scores = score_partials(scorer, [examples[e] for e, _ in rows for _ in range(k)],
                          [decode(tokenizer, x) for x in ids])
  pools: dict[int, list] = {e: [(b, True, beam) for b, beam in enumerate(beams[e])
                                if beam.stop_reason] for e in dict.fromkeys(e for e, _ in rows)}
  for i, ((e, b), sample) in enumerate((row, s) for row, ss in zip(rows, samples) for s in ss):
    parent = beams[e][b]
    step = results.Step(sample.text, sample.token_ids, float(scores[i]), sample.ending)
    steps = parent.steps + (step,)
    stop = _stop_reason(ids[i], steps, sample.ending, builder.room(prompts[e]), config.step)
    pools[e].append((b, False, _Beam(ids[i], steps, stop)))
  return pools


def _select(pools, num_examples: int, config: SearchConfig):
  """Aggregate scores, duplicates and the kept indices of every pool (one jitted call each)."""
  c = config.beam_width * (config.num_candidates + 1)
  s = config.step.max_steps
  step_scores = np.zeros((num_examples, c, s), np.float32)
  step_mask = np.zeros((num_examples, c, s), bool)
  valid = np.zeros((num_examples, c), bool)
  duplicate = np.zeros((num_examples, c), bool)
  for e, pool in pools.items():
    seen = set()
    for i, (_, _, beam) in enumerate(pool):
      n = len(beam.steps)
      step_scores[e, i, :n] = [step.score for step in beam.steps]
      step_mask[e, i, :n] = True
      duplicate[e, i] = beam.ids in seen
      valid[e, i] = not (config.dedup and duplicate[e, i])
      seen.add(beam.ids)
  agg = np.asarray(selection.aggregate_step_scores(step_scores, step_mask,
                                                   config.aggregation))
  index, kept = selection.top_k_valid(agg, valid, config.beam_width)
  return agg, duplicate, np.asarray(index), np.asarray(kept)


def _round_trace(r, pool, agg_e, duplicate_e, kept_index, tokenizer) -> results.SearchRound:
  candidates = tuple(results.Candidate(
      parent=-1 if r == 0 else parent, carried=carried, step=beam.steps[-1],
      response=decode(tokenizer, beam.ids), step_scores=tuple(s.score for s in beam.steps),
      score=float(agg_e[i]), stop_reason=beam.stop_reason, duplicate=bool(duplicate_e[i]))
      for i, (parent, carried, beam) in enumerate(pool))
  return results.SearchRound(r, candidates, tuple(int(i) for i in kept_index))


def step_search(engine: RolloutEngine, builder: PromptBuilder,
                examples: Sequence[types.Example], config: SearchConfig, scorer: StepScorer,
                key: jax.Array) -> list[results.DeliberationResult]:
  """Beam search over reasoning steps, verified by `scorer` (module docstring).

  Returns:
    One result per example, in order: the best kept beam, its aggregate score, and the
    search trace.
  """
  prompts = builder.format(examples)
  room = lambda e: builder.room(prompts[e])
  beams = [[_Beam(stop_reason="length" if room(e) < config.step.max_step_tokens else "")]
           for e in range(len(examples))]
  traces: list[list[results.SearchRound]] = [[] for _ in examples]
  for r in range(config.step.max_steps):
    if all(beam.stop_reason for kept in beams for beam in kept):
      break
    key_r = jax.random.fold_in(jax.random.fold_in(key, r), 0)
    pools = _expand(engine, builder, prompts, examples, beams, config, scorer, key_r)
    agg, duplicate, index, kept = _select(pools, len(examples), config)
    for e, pool in pools.items():
      chosen = [int(i) for i, keep in zip(index[e], kept[e]) if keep]
      beams[e] = [dataclasses.replace(pool[i][2], score=float(agg[e, i])) for i in chosen]
      if config.early_stop and beams[e][0].stop_reason:
        beams[e] = [beam for beam in beams[e] if beam.stop_reason]
      traces[e].append(_round_trace(r, pool, agg[e], duplicate[e], chosen,
                                    builder.tokenizer))
  out = []
  for example, kept, trace in zip(examples, beams, traces):
    best = kept[0]
    out.append(results.DeliberationResult(
        example=example, response=decode(builder.tokenizer, best.ids), token_ids=best.ids,
        steps=best.steps, score=best.score, stop_reason=best.stop_reason, trace=tuple(trace)))
  return out
