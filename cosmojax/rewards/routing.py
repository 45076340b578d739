"""Composite rewards that route each sample to another reward function: `routed`, CoSMo's
Task-Aware term, and the efficiency term conditioned on correctness.

Sub-functions are named by specs (`base.make_reward_function`), so a learned verifier
registered in `REWARD_FUNCTIONS` replaces a rule-based one by a config change:

    {"fn": "task_aware", "kwargs": {"safety": verifier_spec("safety", "/ckpt/safety_rm")}}

(`cosmojax.rewards.learned.verifier_spec` builds the spec of a learned verifier.)
"""

from __future__ import annotations

import collections
import re
from typing import Mapping, Sequence

import numpy as np

from cosmojax.rewards import matching
from cosmojax.rewards.base import REWARD_FUNCTIONS, RewardSpec, make_reward_function, spec_key
from cosmojax.types import Example

_MARKUP = re.compile(r"<\s*/?\s*\w+\s*>")


def _dispatch(completions: Sequence[str], examples: Sequence[Example],
              specs: Sequence[RewardSpec | None]) -> np.ndarray:
  """Scores sample i with specs[i] (NaN where None), one batched call per distinct spec."""
  groups: dict[str, list[int]] = collections.defaultdict(list)
  by_key: dict[str, RewardSpec] = {}
  for i, spec in enumerate(specs):
    if spec is not None:
      key = spec_key(spec)
      groups[key].append(i)
      by_key[key] = spec
  out = np.full(len(examples), np.nan)
  for key, idx in groups.items():
    fn = make_reward_function(by_key[key])
    out[idx] = fn([completions[i] for i in idx], [examples[i] for i in idx])
  return out


@REWARD_FUNCTIONS.register("routed")
def routed(completions: Sequence[str], examples: Sequence[Example], *,
           routes: Mapping[str, RewardSpec], default: RewardSpec | None = None) -> np.ndarray:
  """Scores each sample with the spec its task routes to (`routes[task]`), else `default`;
  NaN for tasks with neither."""
  return _dispatch(completions, examples, [routes.get(e.task, default) for e in examples])


def task_verifier(example: Example, routes: Mapping[str, RewardSpec], safety: RewardSpec,
                  value: RewardSpec, knowledge: RewardSpec,
                  instruction: RewardSpec) -> RewardSpec:
  """The verifier of one example: its task's route, else chosen from its labels."""
  if example.task in routes:
    return routes[example.task]
  if example.safety.unsafe:
    return safety
  if example.preferred is not None:
    return value
  if example.instructions:
    return instruction
  if example.ground_truth is not None:
    return knowledge
  return safety  # an open, safe request: the safety verifier rewards answering it


@REWARD_FUNCTIONS.register("task_aware")
def task_aware(completions: Sequence[str], examples: Sequence[Example], *,
               routes: Mapping[str, RewardSpec] | None = None, safety: RewardSpec = "safety",
               value: RewardSpec = "value", knowledge: RewardSpec = "accuracy",
               instruction: RewardSpec = "instruction_following") -> np.ndarray:
  """CoSMo's Task-Aware term: each sample scored by its task's verifier (Safety, Value or
  Knowledge; instruction checkers for instruction tasks).

  `routes` maps task names to verifier specs; unrouted tasks are chosen by label: unsafe ->
  safety; a preferred answer -> value; instructions -> instruction; a reference answer ->
  knowledge; otherwise (an open, safe request) -> safety.
  """
  routes = routes or {}
  specs = [task_verifier(e, routes, safety, value, knowledge, instruction) for e in examples]
  return _dispatch(completions, examples, specs)


@REWARD_FUNCTIONS.register("efficiency")
def efficiency(completions: Sequence[str], examples: Sequence[Example], *,
               correctness: RewardSpec = "accuracy", threshold: float = 1.0,
               short_words: float = 50, long_words: float = 400,
               max_penalty: float = 0.5) -> np.ndarray:
  """SafeWork-R1's efficiency term: a length reward conditioned on correctness.

      r = 1 - max_penalty * clip((L - short_words) / (long_words - short_words), 0, 1)
          if correctness >= threshold, else 0;   NaN where correctness is NaN

  with L the completion's word count (`matching.word_count`, markup tags excluded). Short
  correct answers beat long correct ones, and every correct answer (>= 1 - max_penalty > 0)
  beats every wrong one, so brevity gains a wrong answer nothing. `correctness` is any
  reward spec (e.g. `task_aware`, covering safety, value and knowledge tasks).
  """
  if not 0 <= short_words < long_words or not 0 <= max_penalty < 1:
    raise ValueError(f"efficiency: need 0 <= short_words < long_words and 0 <= max_penalty < 1;"
                     f" got {short_words}, {long_words}, {max_penalty}")
  correct = make_reward_function(correctness)(completions, examples)
  length = np.array([matching.word_count(_MARKUP.sub(" ", c)) for c in completions])
  excess = np.clip((length - short_words) / (long_words - short_words), 0.0, 1.0)
  return np.where(np.isnan(correct), np.nan,
                  np.where(correct >= threshold, 1.0 - max_penalty * excess, 0.0))

