"""Evaluation runs: generate on held-out prompts, decode, and score the suite metrics."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import jax

from cosmojax import types
from cosmojax.eval.suite_metrics import Metric, compute_suite_metrics
from cosmojax.rewards.parsing import DEFAULT_TAGS
from cosmojax.rollout.base import RolloutEngine, SamplingConfig
from cosmojax.rollout.text import decode_completions


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """The metrics of one evaluation and the completions they were computed from."""

  metrics: dict[str, Metric]
  completions: tuple[str, ...]
  examples: tuple[types.Example, ...]

  def samples(self, per_task: int = 1) -> list[tuple[types.Example, str]]:
    """Up to `per_task` (example, completion) pairs of each task, for reports."""
    seen: dict[str, int] = {}
    out = []
    for example, completion in zip(self.examples, self.completions):
      if seen.get(example.task, 0) < per_task:
        seen[example.task] = seen.get(example.task, 0) + 1
        out.append((example, completion))
    return out


def generate_completions(engine: RolloutEngine,
                         batches: Iterable[tuple[types.PromptBatch, types.BatchMeta]],
                         tokenizer: Any, sampling: SamplingConfig, key: jax.Array
                         ) -> tuple[list[str], list[types.Example]]:
  """Completions (group size 1) for every real prompt of `batches`, in order."""
  if sampling.group_size != 1:
    raise ValueError(f"evaluation samples one completion per prompt; got group_size="
                     f"{sampling.group_size}.")
  completions: list[str] = []
  examples: list[types.Example] = []
  for i, (batch, meta) in enumerate(batches):
    rollout = engine.generate(batch, jax.random.fold_in(key, i), sampling)
    texts = decode_completions(rollout, tokenizer, eos_ids=sampling.eos_ids)
    for row, example in enumerate(meta.examples):
      if example is not None:
        completions.append(texts[row])
        examples.append(example)
  return completions, examples


def evaluate(engine: RolloutEngine, batches: Iterable[tuple[types.PromptBatch, types.BatchMeta]],
             tokenizer: Any, sampling: SamplingConfig, key: jax.Array, *,
             tags: Sequence[str] = DEFAULT_TAGS) -> Evaluation:
  """Generates on `batches` (greedy unless `sampling` says otherwise) and computes the suite
  metrics (capability, instruction following, unsafe compliance, attack success, over-refusal,
  value accuracy, format validity)."""
  completions, examples = generate_completions(engine, batches, tokenizer, sampling, key)
  if not examples:
    raise ValueError("evaluate: the evaluation batches hold no example.")
  metrics = compute_suite_metrics(completions, examples, tags=tags)
  return Evaluation(metrics, tuple(completions), tuple(examples))

