"""Reward functions, their registry, batched evaluation with failure isolation, and recipes.

    from cosmojax import rewards
    rewarder = rewards.RecipeRewarder(rewards.REWARD_RECIPES.get("cosmo_rl")())
    matrix = rewarder(completions, examples, step)   # rewards_nk [N, K], NaN = not applicable

Registered reward functions (`REWARD_FUNCTIONS`): accuracy, consistency, efficiency, format,
helpful, instruction_following, learned_verifier, over_refusal, refusal, repetition, routed,
safety, task_aware, textual_key, value, visual_focus, visual_key.

Learned verifiers (reward models, generative judges) are configured with `verifier_spec`:
    {"fn": "task_aware", "kwargs": {"safety": verifier_spec("safety", "/ckpt/safety_rm")}}
"""

from cosmojax.rewards.accuracy import (ANSWER_TYPES, check_answer, choice_index, math_equal,
                                       normalize_answer_text, single_number)
from cosmojax.rewards.base import (REWARD_FUNCTIONS, RewardFn, RewardFunction,
                                   RewardFunctionError, RewardSpec, make_reward_function,
                                   register_per_sample)
from cosmojax.rewards.evaluator import RewardEvaluator, RewardResults
from cosmojax.rewards.instructions import (INSTRUCTION_CHECKERS, InstructionChecker,
                                           check_instruction, parse_instruction)
from cosmojax.rewards.learned import (MODEL_KINDS, SCORE_TRANSFORMS, VERIFIER_CACHE,
                                      VERIFIER_TEMPLATES, VerifierCache, learned_verifier,
                                      load_verifier, verifier_spec)
from cosmojax.rewards.matching import coverage, fact_covered, numbers, tokens, word_count
from cosmojax.rewards.parsing import DEFAULT_TAGS, ParsedResponse, parse_response
from cosmojax.rewards.perception import coverage_level
from cosmojax.rewards.recipes import (BENIGN_PROBE_TASKS, CAPABILITY_TASKS, INSTRUCTION_TASKS,
                                      REWARD_RECIPES, SUITE_TASKS, UNSAFE_TASKS, VALUE_TASKS,
                                      WEIGHT_SCHEDULES, Recipe, RecipeRewarder, RewardMatrix,
                                      build_recipe, reward_metrics, schedule_multiplier)
from cosmojax.rewards.routing import task_verifier
from cosmojax.rewards.safety import (COMPLIANCE_MARKERS, REFUSAL_PHRASES, RefusalDetector,
                                     refusal_detector)
from cosmojax.rewards.structure import repeated_ngram_fraction
