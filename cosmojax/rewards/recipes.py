"""Reward recipes: which objectives score which task, with which weights, over training steps.

A recipe config is a plain nested dict (ml_collections-friendly: a `ConfigDict` of it works
and configs override single entries):

    {
      "objectives": {name: reward spec},    # K objectives: {"fn": registry name, "kwargs": {...}}
      "tasks": {task: {objective: weight}}, # the objectives routed to each task, with weights
      "default_task": {objective: weight},  # for tasks not listed (used when not strict_tasks)
      "strict_tasks": bool,                 # True: a task not listed is an error
      "schedules": {objective: {"kind": ..., ...}},  # optional weight multipliers over steps
    }

Objectives are ordered by name (sorted, as ConfigDict orders keys), so a dict and its
ConfigDict give the same columns. Scoring a batch at step t gives a `RewardMatrix`:

    rewards_nk[n, k]  objective k's reward for sample n; NaN where k is not routed to the
                      sample's task, where the function does not apply, or where it failed
    weights_nk[n, k]  tasks[task_n][k] * schedule_k(t); 0 where k is not routed to task_n
    routed_nk[n, k]   whether k is routed to task_n

Weights are [N, K] (a weight per sample because tasks carry their own weights); a
recipe whose tasks share weights gives identical rows. The advantage stage normalizes each
objective over the group, then combines with these weights, skipping NaN.

Schedules (`WEIGHT_SCHEDULES`) multiply an objective's task weights by m(t):

    constant: m = value
    linear:   m = start + (end - start) * clip((t - begin) / steps, 0, 1)
    cosine:   m = end + (start - end) * (1 + cos(pi * clip((t - begin) / steps, 0, 1))) / 2

VTPerception-R1's perception-first schedule is a decaying linear multiplier on the
perception objectives (visual_key, textual_key).
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cosmojax.registry import Registry
from cosmojax.rewards.base import RewardFunction, make_reward_function
from cosmojax.rewards.evaluator import RewardEvaluator
from cosmojax.rewards.parsing import DEFAULT_TAGS
from cosmojax.types import Example

# Task names of the synthetic suite (cosmojax.data); the recipes below route on them.
CAPABILITY_TASKS = ("count", "compare", "arithmetic")
INSTRUCTION_TASKS = ("instruction",)
UNSAFE_TASKS = ("harmful_text", "jailbreak_typographic", "jailbreak_query_image",
                "jailbreak_split_intent")
BENIGN_PROBE_TASKS = ("benign_probe",)
VALUE_TASKS = ("value",)
SUITE_TASKS = (CAPABILITY_TASKS + INSTRUCTION_TASKS + UNSAFE_TASKS + BENIGN_PROBE_TASKS
               + VALUE_TASKS)

Schedule = Callable[..., float]
WEIGHT_SCHEDULES = Registry[Schedule]("weight schedule")
REWARD_RECIPES = Registry[Callable[..., dict]]("reward recipe")


def _progress(step: int, steps: int, begin: int) -> float:
  if steps <= 0:
    raise ValueError(f"schedule steps must be positive; got {steps}")
  return min(max((step - begin) / steps, 0.0), 1.0)


@WEIGHT_SCHEDULES.register("constant")
def constant_schedule(step: int, *, value: float = 1.0) -> float:
  del step
  return value


@WEIGHT_SCHEDULES.register("linear")
def linear_schedule(step: int, *, start: float, end: float, steps: int, begin: int = 0) -> float:
  return start + (end - start) * _progress(step, steps, begin)


@WEIGHT_SCHEDULES.register("cosine")
def cosine_schedule(step: int, *, start: float, end: float, steps: int, begin: int = 0) -> float:
  return end + (start - end) * (1.0 + math.cos(math.pi * _progress(step, steps, begin))) / 2.0


def schedule_multiplier(spec: Mapping[str, Any], step: int) -> float:
  """m(step) of a schedule spec {"kind": name, **kwargs}."""
  kwargs = dict(spec)
  kind = kwargs.pop("kind", None)
  if kind is None:
    raise ValueError(f"schedule {dict(spec)!r} has no 'kind'; known: {WEIGHT_SCHEDULES.names()}")
  try:
    value = float(WEIGHT_SCHEDULES.get(kind)(step, **kwargs))
  except TypeError as e:
    raise ValueError(f"schedule {kind!r}: bad arguments {sorted(kwargs)}: {e}") from None
  if not math.isfinite(value):
    raise ValueError(f"schedule {dict(spec)!r} gives {value} at step {step}")
  return value


@dataclasses.dataclass(frozen=True)
class RewardMatrix:
  """The rewards of one batch under a recipe (see the module docstring for the fields)."""

  rewards_nk: np.ndarray  # [N, K] float32, NaN = not applicable
  weights_nk: np.ndarray  # [N, K] float32
  routed_nk: np.ndarray  # [N, K] bool
  names: tuple[str, ...]  # [K]
  failures: Mapping[str, int]


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A validated recipe (build it with `build_recipe`)."""

  objectives: tuple[RewardFunction, ...]
  task_weights: Mapping[str, Mapping[str, float]]
  default_task: Mapping[str, float]
  strict_tasks: bool
  schedules: Mapping[str, Mapping[str, Any]]

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(f.name for f in self.objectives)

  def task_row(self, task: str, example_id: str = "") -> Mapping[str, float]:
    """The objective weights of a task."""
    if task in self.task_weights:
      return self.task_weights[task]
    if self.strict_tasks:
      raise ValueError(f"reward recipe has no route for task {task!r} (example {example_id!r}); "
                       f"routed tasks: {sorted(self.task_weights)}")
    return self.default_task

  def weights(self, examples: Sequence[Example], step: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """(weights_nk [N, K] float32, routed_nk [N, K] bool) at `step`."""
    multipliers = np.array([schedule_multiplier(self.schedules[n], step) if n in self.schedules
                            else 1.0 for n in self.names])
    base_nk = np.zeros((len(examples), len(self.names)))
    routed_nk = np.zeros((len(examples), len(self.names)), bool)
    for i, example in enumerate(examples):
      row = self.task_row(example.task, example.id)
      for k, name in enumerate(self.names):
        if name in row:
          base_nk[i, k], routed_nk[i, k] = row[name], True
    return (base_nk * multipliers).astype(np.float32), routed_nk


def _to_dict(config: Any) -> dict[str, Any]:
  return config.to_dict() if hasattr(config, "to_dict") else copy.deepcopy(dict(config))


def build_recipe(config: Mapping[str, Any]) -> Recipe:
  """Validates a recipe config (dict or ConfigDict) and builds its reward functions."""
  config = _to_dict(config)
  unknown = set(config) - {"objectives", "tasks", "default_task", "strict_tasks", "schedules"}
  if unknown:
    raise ValueError(f"reward recipe: unknown keys {sorted(unknown)}")
  specs = config.get("objectives") or {}
  if not specs:
    raise ValueError("reward recipe: 'objectives' is empty")
  objectives = tuple(make_reward_function(specs[n], name=n) for n in sorted(specs))
  tasks = {t: dict(row) for t, row in (config.get("tasks") or {}).items()}
  default_task = dict(config.get("default_task") or {})
  schedules = {n: dict(s) for n, s in (config.get("schedules") or {}).items()}
  for where, row in [(f"tasks.{t}", r) for t, r in tasks.items()] + [("default_task",
                                                                      default_task)]:
    for name, weight in row.items():
      if name not in specs:
        raise ValueError(f"reward recipe: {where} names unknown objective {name!r}; "
                         f"objectives: {sorted(specs)}")
      if not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"reward recipe: {where}.{name} weight must be a finite number; "
                         f"got {weight!r}")
  for name, spec in schedules.items():
    if name not in specs:
      raise ValueError(f"reward recipe: schedules names unknown objective {name!r}")
    schedule_multiplier(spec, 0)  # validates the kind and its arguments
  return Recipe(objectives=objectives, task_weights=tasks, default_task=default_task,
                strict_tasks=bool(config.get("strict_tasks", True)), schedules=schedules)


class RecipeRewarder:
  """Scores batches under a recipe: each objective only on the samples routed to it.

  Evaluator options (`max_workers`, `max_failure_rate`, `window`, ...) are passed on to
  `RewardEvaluator`, whose failure policy applies.
  """

  def __init__(self, recipe: Recipe | Mapping[str, Any], **evaluator_kwargs: Any):
    self.recipe = recipe if isinstance(recipe, Recipe) else build_recipe(recipe)
    self.evaluator = RewardEvaluator(self.recipe.objectives, **evaluator_kwargs)
    self._background = concurrent.futures.ThreadPoolExecutor(1, "recipe-rewarder")

  @property
  def names(self) -> tuple[str, ...]:
    return self.recipe.names

  def __call__(self, completions: Sequence[str], examples: Sequence[Example],
               step: int = 0) -> RewardMatrix:
    weights_nk, routed_nk = self.recipe.weights(examples, step)
    subsets = {n: np.flatnonzero(routed_nk[:, k]) for k, n in enumerate(self.names)}
    results = self.evaluator.evaluate(completions, examples, subsets)
    rewards_nk = np.stack([results.values[n] for n in self.names], axis=1).astype(np.float32)
    return RewardMatrix(rewards_nk=rewards_nk, weights_nk=weights_nk, routed_nk=routed_nk,
                        names=self.names, failures=dict(results.failures))

  def submit(self, completions: Sequence[str], examples: Sequence[Example], step: int = 0
             ) -> concurrent.futures.Future[RewardMatrix]:
    """`__call__` on a background thread; returns its future."""
    return self._background.submit(self, completions, examples, step)

  def close(self) -> None:
    self._background.shutdown(wait=True)
    self.evaluator.close()


def reward_metrics(matrix: RewardMatrix, examples: Sequence[Example]) -> dict[str, float]:
  """Per-objective and per-task means over applicable samples, NaN fractions and failures."""
  metrics: dict[str, float] = {}
  tasks = np.array([e.task for e in examples])
  for k, name in enumerate(matrix.names):
    column, routed = matrix.rewards_nk[:, k], matrix.routed_nk[:, k]
    applicable = ~np.isnan(column)
    if applicable.any():
      metrics[f"rewards/{name}/mean"] = float(column[applicable].mean())
    if routed.any():
      metrics[f"rewards/{name}/nan_fraction"] = float(1.0 - applicable[routed].mean())
    metrics[f"rewards/{name}/failures"] = float(matrix.failures.get(name, 0))
    for task in np.unique(tasks[applicable]):
      metrics[f"rewards/{name}/{task}"] = float(column[applicable & (tasks == task)].mean())
  return metrics


# ---------------------------------------------------------------------------------------------
# Example recipes for the synthetic suite. Each returns a fresh config dict; configs wrap it
# in a ConfigDict and override entries (weights, thresholds, a learned verifier's name).


def _tasks(weights: Mapping[str, float], *task_groups: Sequence[str]) -> dict[str, dict]:
  return {task: dict(weights) for group in task_groups for task in group}


def _verifier_routes(tags: Sequence[str]) -> dict[str, Any]:
  """Task-aware verifier choice for the suite: capability -> accuracy (Knowledge),
  instruction -> instruction checkers, unsafe and benign probes -> Safety, value -> Value."""
  tags = tuple(tags)
  routes = {t: {"fn": "accuracy", "kwargs": {"tags": tags}} for t in CAPABILITY_TASKS}
  routes.update({t: {"fn": "instruction_following", "kwargs": {"tags": tags}}
                 for t in INSTRUCTION_TASKS})
  routes.update({t: {"fn": "safety", "kwargs": {"tags": tags}}
                 for t in UNSAFE_TASKS + BENIGN_PROBE_TASKS})
  routes.update({t: {"fn": "value", "kwargs": {"tags": tags}} for t in VALUE_TASKS})
  return routes


@REWARD_RECIPES.register("cosmo_rl")
def cosmo_rl_recipe(tags: Sequence[str] = ("think", "answer")) -> dict[str, Any]:
  """CoSMo-RL: Format + Visual-Focus + Helpful + Task-Aware on every track.

  Equal weights (each objective is normalized over the group before combination, so the
  weights set relative influence). Task-Aware uses rule-based verifiers; a learned one
  replaces them with e.g.
  `objectives.task_aware.kwargs.routes.value = verifier_spec("value", "/ckpt/value_rm")`.
  """
  tags = tuple(tags)
  all_four = {"format": 1.0, "visual_focus": 1.0, "helpful": 1.0, "task_aware": 1.0}
  no_visual = {"format": 1.0, "helpful": 1.0, "task_aware": 1.0}
  return {
      "objectives": {
          "format": {"fn": "format", "kwargs": {"tags": tags}},
          "visual_focus": {"fn": "visual_focus", "kwargs": {"tags": tags}},
          "helpful": {"fn": "helpful", "kwargs": {"tags": tags}},
          "task_aware": {"fn": "task_aware", "kwargs": {"routes": _verifier_routes(tags)}},
      },
      "tasks": {
          **_tasks(all_four, CAPABILITY_TASKS, VALUE_TASKS, BENIGN_PROBE_TASKS),
          **_tasks(no_visual, INSTRUCTION_TASKS),
          # Helpful does not apply to unsafe requests; describing the image is no goal there.
          **_tasks({"format": 1.0, "task_aware": 1.0}, UNSAFE_TASKS),
      },
      "default_task": {"format": 1.0, "task_aware": 1.0},
      "strict_tasks": False,
      "schedules": {},
  }


@REWARD_RECIPES.register("vtperception_r1")
def vtperception_r1_recipe(tags: Sequence[str] = DEFAULT_TAGS, perception_start: float = 2.0,
                           perception_end: float = 0.5,
                           perception_steps: int = 500) -> dict[str, Any]:
  """VTPerception-R1: R_acc + R_fmt + R_vkey + R_tkey + R_rep + R_cons.

  Perception-first: the visual_key and textual_key weights decay linearly from
  `perception_start` to `perception_end` over `perception_steps` steps. Arithmetic answers
  are derived, not read off the image, so their consistency support includes the reasoning.
  Instruction tasks are scored by their checkers in the accuracy column.
  """
  tags = tuple(tags)
  six = {n: 1.0 for n in ("accuracy", "format", "visual_key", "textual_key", "repetition",
                          "consistency")}
  perception_first = {"kind": "linear", "start": perception_start, "end": perception_end,
                      "steps": perception_steps}
  return {
      "objectives": {
          "accuracy": {"fn": "routed", "kwargs": {
              "routes": {t: {"fn": "instruction_following", "kwargs": {"tags": tags}}
                         for t in INSTRUCTION_TASKS},
              "default": {"fn": "accuracy", "kwargs": {"tags": tags}}}},
          "format": {"fn": "format", "kwargs": {"tags": tags}},
          "visual_key": {"fn": "visual_key", "kwargs": {"tags": tags, "tau_lo": 0.5,
                                                        "tau_hi": 1.0}},
          "textual_key": {"fn": "textual_key", "kwargs": {"tags": tags, "tau_lo": 0.5,
                                                          "tau_hi": 1.0}},
          "repetition": {"fn": "repetition", "kwargs": {"ngram": 3, "max_penalty": 1.0}},
          "consistency": {"fn": "routed", "kwargs": {
              "routes": {"arithmetic": {"fn": "consistency", "kwargs": {
                  "tags": tags, "support": ("description", "question", "think")}}},
              "default": {"fn": "consistency", "kwargs": {"tags": tags}}}},
      },
      "tasks": {
          **_tasks(six, CAPABILITY_TASKS),
          **_tasks({"accuracy": 1.0, "format": 1.0, "repetition": 1.0}, INSTRUCTION_TASKS),
      },
      # VTPerception is a capability recipe: other tasks only keep the form terms.
      "default_task": {"format": 1.0, "repetition": 1.0},
      "strict_tasks": False,
      "schedules": {"visual_key": dict(perception_first), "textual_key": dict(perception_first)},
  }


@REWARD_RECIPES.register("safework_r1")
def safework_r1_recipe(tags: Sequence[str] = ("think", "answer"),
                       efficiency_weight: float = 0.5) -> dict[str, Any]:
  """SafeWork-R1: Safety, Value and Knowledge verifiers (weights 1.0 each, as in its public
  scripts), plus the efficiency stage's length term conditioned on the task's verifier
  (set `efficiency_weight=0` for the stages before it)."""
  tags = tuple(tags)
  routes = _verifier_routes(tags)
  knowledge_routes = {t: routes[t] for t in INSTRUCTION_TASKS}
  return {
      "objectives": {
          "safety": {"fn": "safety", "kwargs": {"tags": tags}},
          "value": {"fn": "value", "kwargs": {"tags": tags}},
          "knowledge": {"fn": "routed", "kwargs": {
              "routes": knowledge_routes, "default": {"fn": "accuracy", "kwargs": {"tags": tags}}}},
          "efficiency": {"fn": "efficiency", "kwargs": {
              "correctness": {"fn": "task_aware", "kwargs": {"routes": routes}},
              "short_words": 50, "long_words": 400, "max_penalty": 0.5}},
      },
      "tasks": {
          **_tasks({"safety": 1.0, "efficiency": efficiency_weight}, UNSAFE_TASKS,
                   BENIGN_PROBE_TASKS),
          **_tasks({"value": 1.0, "efficiency": efficiency_weight}, VALUE_TASKS),
          **_tasks({"knowledge": 1.0, "efficiency": efficiency_weight}, CAPABILITY_TASKS,
                   INSTRUCTION_TASKS),
      },
      "default_task": {"safety": 1.0},
      "strict_tasks": False,
      "schedules": {},
  }
