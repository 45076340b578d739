"""SafeWork-R1's inference-time methods: value-guided intervention, human-in-the-loop
correction of reasoning steps, and deliberative search with step-level verification.

    prompts = inference.PromptBuilder.create(tokenizer, batch_size=8, length_buckets=(512,))
    scorer = inference.ValueModelScorer(value_model, value_tokenizer)
    step = inference.StepConfig(delimiters=("\\n\\n",), max_step_tokens=128, max_steps=12)
    guided = inference.deliberate(engine, prompts, examples,
                                  inference.InterventionConfig(step, threshold=0.0,
                                                               max_resamples=4),
                                  scorer, key, hook=review)        # interventions, edits
    searched = inference.deliberate(engine, prompts, examples,
                                    inference.SearchConfig(step, beam_width=4,
                                                           num_candidates=4),
                                    scorer, key)                   # best response + trace

  steps       step segmentation, `PromptBuilder` (prompt + partial response rows), sampling
  scorers     step scorers (value model, reward model, judge, reward function), registry
  selection   aggregation of step scores, batched top-k (pure jnp, jitted)
  guided      value-guided intervention and the human-in-the-loop hook
  search      beam search over steps
  results     `DeliberationResult`, steps, interventions, edits, search rounds
  deliberate  the entry point
"""

from cosmojax.inference.deliberate import MethodConfig, deliberate
from cosmojax.inference.guided import (DEFAULT_CORRECTIVE_PREFIX, HumanHook, InterventionConfig,
                                       guided_generate)
from cosmojax.inference.results import (SOURCES, STOP_REASONS, Candidate, DeliberationResult,
                                        HumanEdit, Intervention, SearchRound, Step)
from cosmojax.inference.scorers import (STEP_SCORERS, JudgeScorer, RewardFunctionScorer,
                                        RewardModelScorer, ScorerSpec, StepScorer,
                                        ValueModelScorer, make_step_scorer, score_partials)
from cosmojax.inference.search import SearchConfig, step_search
from cosmojax.inference.selection import AGGREGATIONS, aggregate_step_scores, top_k_valid
from cosmojax.inference.steps import (ENDINGS, Delimiter, PromptBuilder, StepConfig, StepSample,
                                      edited_step, generate_steps, split_step)

__all__ = [
    "AGGREGATIONS", "Candidate", "DEFAULT_CORRECTIVE_PREFIX", "Delimiter", "DeliberationResult",
    "ENDINGS", "HumanEdit", "HumanHook", "Intervention", "InterventionConfig", "JudgeScorer",
    "MethodConfig", "PromptBuilder", "RewardFunctionScorer", "RewardModelScorer", "SOURCES",
    "STEP_SCORERS", "STOP_REASONS", "ScorerSpec", "SearchConfig", "SearchRound", "Step",
    "StepConfig", "StepSample", "StepScorer", "ValueModelScorer", "aggregate_step_scores",
    "deliberate", "edited_step", "generate_steps", "guided_generate", "make_step_scorer",
    "score_partials", "split_step", "step_search", "top_k_valid",
]
