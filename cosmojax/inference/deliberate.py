"""The one entry point of SafeWork-R1's inference-time methods: `deliberate`."""

from __future__ import annotations

from typing import Any, Sequence, Union

import jax

from cosmojax import types
from cosmojax.inference.guided import HumanHook, InterventionConfig, guided_generate
from cosmojax.inference.results import DeliberationResult
from cosmojax.inference.scorers import ScorerSpec, make_step_scorer
from cosmojax.inference.search import SearchConfig, step_search
from cosmojax.inference.steps import PromptBuilder
from cosmojax.rollout.base import RolloutEngine

MethodConfig = Union[InterventionConfig, SearchConfig]


def deliberate(engine: RolloutEngine, prompts: PromptBuilder | Any,
               examples: Sequence[types.Example],
               config: MethodConfig, scorer: ScorerSpec | None, key: jax.Array, *,
               hook: HumanHook | None = None) -> list[DeliberationResult]:
  """Responses to `examples`, reasoned step by step under a step verifier.

      prompts = PromptBuilder.create(tokenizer, batch_size=8, length_buckets=(512, 1024))
      scorer = ValueModelScorer(value_model, value_tokenizer)       # or "value_model" spec
      results = deliberate(engine, prompts, examples, SearchConfig(beam_width=4), scorer, key)
      results[0].response, results[0].trace

  Args:
    engine: the policy's rollout engine (`JaxRolloutEngine`, or any `RolloutEngine`).
    prompts: builds prompt batches of (example, partial response) rows; holds the policy's
      tokenizer, which decodes steps and encodes inserted text. A tokenizer instead stands
      for `PromptBuilder.create(tokenizer)` (text-only prompts, its default shapes).
    examples: the prompts to answer (a final assistant turn, if any, is ignored).
    config: `InterventionConfig`: step-wise generation with value-guided intervention (and
      the human-in-the-loop hook); `SearchConfig`: beam search with step-level verification.
    scorer: the step verifier: a callable (examples, partial_texts) -> [N] scores, a
      `STEP_SCORERS` name, or {"scorer": name, "kwargs": {...}}; None only for guided
      generation without intervention (threshold -inf).
    key: PRNG key; the same key, inputs and parameters give the same results.
    hook: the human-in-the-loop hook (guided generation only).

  Returns:
    One `DeliberationResult` per example, in order.
  """
  if not isinstance(prompts, PromptBuilder):
    if not hasattr(prompts, "apply_chat_template"):
      raise TypeError(f"deliberate: prompts must be a PromptBuilder or a tokenizer with a chat "
                      f"template; got {type(prompts).__name__}")
    prompts = PromptBuilder.create(prompts)
  step_scorer = None if scorer is None else make_step_scorer(scorer)
  if isinstance(config, SearchConfig):
    if hook is not None:
      raise ValueError("deliberate: the human-in-the-loop hook applies to guided generation "
                       "(InterventionConfig), not to search (SearchConfig).")
    if step_scorer is None:
      raise ValueError("deliberate: search (SearchConfig) needs a step scorer.")
    return step_search(engine, prompts, examples, config, step_scorer, key)
  if isinstance(config, InterventionConfig):
    return guided_generate(engine, prompts, examples, config, step_scorer, key, hook=hook)
  raise TypeError(f"deliberate: config must be an InterventionConfig or a SearchConfig; got "
                  f"{type(config).__name__}")
