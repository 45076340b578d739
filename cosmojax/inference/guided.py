"""Value-guided step-wise generation with intervention and human-in-the-loop correction.

SafeWork-R1's inference-time interventions: the policy reasons one step at a time
(`cosmojax.inference.steps`); after each step a step scorer (a value model, a reward model,
a judge, any callable) scores the partial response, and a step scored below
`InterventionConfig.threshold` is intervened on, in this order:

  1. resample: `max_resamples` fresh samples of the step (one batched generate call over
     every flagged response); the best of the original and the resamples is kept (the first
     of the highest, so the original wins ties);
  2. corrective prefix: if the kept step still scores below the threshold, the step is
     regenerated after a corrective text (e.g. "Wait, this request could cause harm. "),
     which becomes the start of the step; the regenerated step is kept whatever its score.

Each action is recorded (`Intervention`: step index, score before and after, the scores
compared). `max_interventions` bounds the steps intervened on per response.

Then a human-in-the-loop hook, if given, sees every step:

    hook(example, steps_so_far: tuple[str, ...], proposed_step: str) -> str | None

returning None (or the proposed text) to accept it, or the text that replaces it; the edit is
tokenized and appended instead, rescored, recorded (`HumanEdit`), and later steps continue
from it. An edited step ends the response when it holds a final delimiter.

All rows that are still generating move together: one round generates the next step of every
unfinished response in batched calls, scores them in one scorer call, and so on. Keys: round
r uses k_r = fold_in(key, r); its proposals fold_in(k_r, 0), resamples fold_in(k_r, 1),
corrective regenerations fold_in(k_r, 2) (each then split per batch by `generate_steps`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import numpy as np

from cosmojax import types
from cosmojax.data.formatting import FormattedExample
from cosmojax.inference import results
from cosmojax.inference import selection
from cosmojax.inference.scorers import StepScorer, score_partials
from cosmojax.inference.steps import (PromptBuilder, StepConfig, StepSample, decode,
                                      edited_step, generate_steps)
from cosmojax.rollout.base import RolloutEngine

DEFAULT_CORRECTIVE_PREFIX = "Wait, this request could cause harm. "

HumanHook = Callable[[types.Example, tuple[str, ...], str], "str | None"]


@dataclasses.dataclass(frozen=True)
class InterventionConfig:
  """Value-guided step-wise generation (module docstring).

  Attributes:
    step: step segmentation and sampling.
    threshold: a step whose score is < threshold is intervened on; -inf never intervenes
      (plain step-wise sampling, scores still recorded).
    max_resamples: N fresh samples of a flagged step (0: no resampling).
    corrective_prefix: text that starts the regenerated step ("" : no regeneration).
    max_interventions: the most steps intervened on per response (None: no limit).
  """

  step: StepConfig = StepConfig()
  threshold: float = 0.0
  max_resamples: int = 0
  corrective_prefix: str = DEFAULT_CORRECTIVE_PREFIX
  max_interventions: int | None = None

  def __post_init__(self):
    if self.max_resamples < 0 or (self.max_interventions is not None
                                  and self.max_interventions < 0):
      raise ValueError(f"InterventionConfig: max_resamples ({self.max_resamples}) and "
                       f"max_interventions ({self.max_interventions}) must be >= 0.")
    if math.isnan(self.threshold):
      raise ValueError("InterventionConfig.threshold is NaN.")


@dataclasses.dataclass
class _Trajectory:
  """The mutable state of one example's response."""

  example: types.Example
  prompt: FormattedExample
  ids: list[int] = dataclasses.field(default_factory=list)
  steps: list[results.Step] = dataclasses.field(default_factory=list)
  interventions: list[results.Intervention] = dataclasses.field(default_factory=list)
  edits: list[results.HumanEdit] = dataclasses.field(default_factory=list)
  stop_reason: str = ""
  intervened: int = 0


@dataclasses.dataclass
class _Proposal:
  sample: StepSample
  source: str
  score: float = math.nan


class _Context:
  """What a round needs: the engine, the builder, the config, the scorer."""

  def __init__(self, engine, builder, config, scorer, num_examples):
    self.engine, self.builder, self.config, self.scorer = engine, builder, config, scorer
    self.num_examples = num_examples  # a static row count for the jitted selection

  def generate(self, trajs, extra_ids, num_samples, key) -> list[list[StepSample]]:
    return generate_steps(self.engine, self.builder, [t.prompt for t in trajs],
                          [t.ids + list(extra_ids) for t in trajs], self.config.step,
                          num_samples, key)

  def score(self, trajs: Sequence[_Trajectory], samples: Sequence[StepSample]) -> np.ndarray:
    if self.scorer is None:
      return np.full(len(trajs), math.nan)
    texts = [decode(self.builder.tokenizer, t.ids + list(s.token_ids))
             for t, s in zip(trajs, samples)]
    return score_partials(self.scorer, [t.example for t in trajs], texts)


def _resample(ctx: _Context, trajs, proposals, flagged, key) -> None:
  """Replaces each flagged proposal by the best of it and N resamples; records it."""
  n = ctx.config.max_resamples
  rows = [trajs[j] for j in flagged]
  alternatives = ctx.generate(rows, (), n, key)
  alt_scores = ctx.score([t for t in rows for _ in range(n)],
                         [s for samples in alternatives for s in samples]).reshape(-1, n)
  scores = np.concatenate([[[proposals[j].score] for j in flagged], alt_scores], axis=1)
  padded = np.zeros((ctx.num_examples, n + 1), np.float32)
  padded[:len(flagged)] = scores  # static [examples, N + 1]: one compilation per config
  valid = np.arange(ctx.num_examples)[:, None] < len(flagged)
  best = np.asarray(selection.top_k_valid(padded, np.broadcast_to(valid, padded.shape), 1)[0])
  for row, j in enumerate(flagged):
    b = int(best[row, 0])
    before, proposed = proposals[j].score, proposals[j].sample.text
    if b > 0:
      proposals[j] = _Proposal(alternatives[row][b - 1], "resample", float(scores[row, b]))
    trajs[j].interventions.append(results.Intervention(
        step=len(trajs[j].steps), proposed=proposed, action="resample", score_before=before,
        score_after=proposals[j].score, candidate_scores=tuple(float(s) for s in scores[row])))


def _correct(ctx: _Context, trajs, proposals, flagged, key) -> None:
  """Regenerates each flagged step after the corrective prefix; records it."""
  tokenizer = ctx.builder.tokenizer
  prefix = tuple(int(i) for i in tokenizer.encode(ctx.config.corrective_prefix,
                                                  add_special_tokens=False))
  rows = [trajs[j] for j in flagged]
  continuations = [s[0] for s in ctx.generate(rows, prefix, 1, key)]
  samples = [StepSample(prefix + c.token_ids, decode(tokenizer, prefix + c.token_ids), c.ending)
             for c in continuations]
  scores = ctx.score(rows, samples)
  for j, sample, score in zip(flagged, samples, scores):
    before, proposed = proposals[j].score, proposals[j].sample.text
    proposals[j] = _Proposal(sample, "corrective_prefix", float(score))
    trajs[j].interventions.append(results.Intervention(
        step=len(trajs[j].steps), proposed=proposed, action="corrective_prefix",
        score_before=before,
        score_after=float(score), candidate_scores=(float(score),)))


def _intervene(ctx: _Context, trajs, proposals, key) -> None:
  config = ctx.config
  budget = lambda t: config.max_interventions is None or t.intervened < config.max_interventions
  flagged = [j for j, (t, p) in enumerate(zip(trajs, proposals))
             if p.score < config.threshold and budget(t)]
  for j in flagged:
    trajs[j].intervened += 1
  if flagged and config.max_resamples:
    _resample(ctx, trajs, proposals, flagged, jax.random.fold_in(key, 1))
    flagged = [j for j in flagged if proposals[j].score < config.threshold]
  if flagged and config.corrective_prefix:
    _correct(ctx, trajs, proposals, flagged, jax.random.fold_in(key, 2))


def _human(ctx: _Context, trajs, proposals, hook: HumanHook) -> None:
  """Asks the hook about every proposal; applies and rescores the edits."""
  edited = []
  for j, (t, p) in enumerate(zip(trajs, proposals)):
    reply = hook(t.example, tuple(s.text for s in t.steps), p.sample.text)
    if reply is not None and not isinstance(reply, str):
      raise TypeError(f"human-in-the-loop hook returned {type(reply).__name__} for example "
                      f"{t.example.id!r} step {len(t.steps)}; expected str or None")
    if reply is None or reply == p.sample.text:
      continue
    t.edits.append(results.HumanEdit(len(t.steps), p.sample.text, reply))
    proposals[j] = _Proposal(edited_step(reply, ctx.builder.tokenizer, ctx.config.step),
                             "human")
    edited.append(j)
  scores = ctx.score([trajs[j] for j in edited], [proposals[j].sample for j in edited])
  for j, score in zip(edited, scores):
    proposals[j].score = float(score)


def _append(ctx: _Context, t: _Trajectory, p: _Proposal) -> None:
  step = ctx.config.step
  t.ids.extend(p.sample.token_ids)
  t.steps.append(results.Step(p.sample.text, p.sample.token_ids, p.score, p.sample.ending,
                              p.source))
  if p.sample.ending in ("eos", "final"):
    t.stop_reason = "eos" if p.sample.ending == "eos" else "answer"
  elif len(t.steps) >= step.max_steps:
    t.stop_reason = "max_steps"
  elif ctx.builder.room(t.prompt) - len(t.ids) < step.max_step_tokens:
    t.stop_reason = "length"


def guided_generate(engine: RolloutEngine, builder: PromptBuilder,
                    examples: Sequence[types.Example], config: InterventionConfig,
                    scorer: StepScorer | None, key: jax.Array, *,
                    hook: HumanHook | None = None) -> list[results.DeliberationResult]:
  """Step-wise generation with value-guided intervention and an optional human hook.

  Args:
    engine: the policy's rollout engine.
    builder: builds the prompt batches of (example, partial response) rows.
    examples: the prompts (a final assistant turn, if any, is ignored).
    config: steps, threshold and intervention actions.
    scorer: the step scorer; None scores nothing (no intervention; scores NaN).
    key: PRNG key; the same key, inputs and parameters give the same results.
    hook: the human-in-the-loop hook (module docstring), or None.

  Returns:
    One result per example, in order.
  """
  if scorer is None and config.threshold > -math.inf:
    raise ValueError("guided_generate without a scorer cannot intervene: give a step scorer "
                     "or set InterventionConfig.threshold=-inf.")
  ctx = _Context(engine, builder, config, scorer, len(examples))
  trajs = [_Trajectory(e, p) for e, p in zip(examples, builder.format(examples))]
  for t in trajs:
    if builder.room(t.prompt) < config.step.max_step_tokens:
      t.stop_reason = "length"
  for r in range(config.step.max_steps):
    live = [t for t in trajs if not t.stop_reason]
    if not live:
      break
    key_r = jax.random.fold_in(key, r)
    proposals = [_Proposal(s[0], "model") for s in ctx.generate(
        live, (), 1, jax.random.fold_in(key_r, 0))]
    for p, score in zip(proposals, ctx.score(live, [p.sample for p in proposals])):
      p.score = float(score)
    if scorer is not None:
      _intervene(ctx, live, proposals, key_r)
    if hook is not None:
      _human(ctx, live, proposals, hook)
    for t, p in zip(live, proposals):
      _append(ctx, t, p)
  tokenizer = builder.tokenizer
  return [results.DeliberationResult(
      example=t.example, response=decode(tokenizer, t.ids), token_ids=tuple(t.ids),
      steps=tuple(t.steps), score=t.steps[-1].score if t.steps else math.nan,
      stop_reason=t.stop_reason, interventions=tuple(t.interventions), edits=tuple(t.edits))
      for t in trajs]
