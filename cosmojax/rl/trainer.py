"""One RL step on the host: generate, decode, score, compute advantages, update.

The maths are pure jitted functions (`rollout` engine, `advantages`, `learner.update`); this
driver only moves data between them and the Python reward functions:

    rollout   = engine.generate(prompts, key)                       device
    texts     = decode(rollout)                                     host
    R, w      = recipe(texts, examples, step)  [N, K], NaN = n/a    host
    A         = compute_advantages(R, groups, w)                    device
    old, ref  = log-probs of the old and reference policies         device
    state     = learner.update(state, batch, key)                   device
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cosmojax import types
from cosmojax.rewards.recipes import RecipeRewarder, RewardMatrix, reward_metrics
from cosmojax.rl import learner as learner_lib
from cosmojax.rl.advantages import compute_advantages, overlong_penalty
from cosmojax.rollout.base import RolloutEngine, SamplingConfig
from cosmojax.rollout.text import decode_completions
from cosmojax.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class OverlongConfig:
  """DAPO's soft overlong punishment (`cosmojax.rl.overlong_penalty`) as its own objective.

  Completions of more than max_length - cache_length tokens are penalised linearly down to
  -1 at max_length; the objective "overlong" joins the recipe's objectives with `weight` for
  every task.
  """

  max_length: int
  cache_length: int
  weight: float = 1.0

  def __post_init__(self):
    if not 0 < self.cache_length <= self.max_length or self.weight < 0:
      raise ValueError(f"OverlongConfig: need 0 < cache_length <= max_length and weight >= 0;"
                       f" got {self}")


def with_overlong(rewards: RewardMatrix, lengths_n: Any, sample_mask_n: Any,
                  config: OverlongConfig) -> RewardMatrix:
  """`rewards` with the overlong objective appended (NaN and weight 0 on padding samples)."""
  valid = np.asarray(sample_mask_n, bool)
  penalty = np.asarray(overlong_penalty(jnp.asarray(lengths_n), config.max_length,
                                        config.cache_length), np.float32)
  column = np.where(valid, penalty, np.nan)[:, None]
  weight = np.where(valid, config.weight, 0.0).astype(np.float32)[:, None]
  return RewardMatrix(np.concatenate([rewards.rewards_nk, column], axis=1),
                      np.concatenate([rewards.weights_nk, weight], axis=1),
                      np.concatenate([rewards.routed_nk, valid[:, None]], axis=1),
                      (*rewards.names, "overlong"), rewards.failures)


@dataclasses.dataclass(frozen=True)
class RLStepResult:
  """What one RL step produced: the new state, its metrics, and the samples (for logs)."""

  state: TrainState
  metrics: dict[str, Any]
  completions: tuple[str, ...]
  examples: tuple[types.Example | None, ...]
  rewards: RewardMatrix


def _sample_examples(meta: types.BatchMeta, prompt_index: np.ndarray
                     ) -> tuple[types.Example | None, ...]:
  return tuple(meta.examples[int(p)] for p in prompt_index)


def score_rewards(rewarder: RecipeRewarder, completions: Sequence[str],
                  examples: Sequence[types.Example | None], step: int) -> RewardMatrix:
  """The recipe's R[N, K] and weights [N, K]; padding samples (no example) get NaN rewards
  and zero weights."""
  valid = np.array([e is not None for e in examples])
  idx = np.flatnonzero(valid)
  scored = rewarder([completions[i] for i in idx], [examples[i] for i in idx], step=step)
  k = len(scored.names)
  rewards = np.full((len(examples), k), np.nan, np.float32)
  weights = np.zeros((len(examples), k), np.float32)
  routed = np.zeros((len(examples), k), bool)
  rewards[idx], weights[idx], routed[idx] = scored.rewards_nk, scored.weights_nk, scored.routed_nk
  return RewardMatrix(rewards, weights, routed, scored.names, scored.failures)


class RLTrainer:
  """Runs RL steps: `trainer.step(state, prompts, meta, step, key) -> RLStepResult`.

  Args:
    engine: the rollout engine (its parameters are refreshed from the state each step).
    rewarder: the reward recipe of the stage.
    tokenizer: decodes completions.
    sampling: how completions are sampled (`group_size` = G).
    config: the learner's configuration (loss, advantages, epochs, minibatches).
    reference: the reference policy's state, needed when `config.loss.kl_coef != 0`.
    overlong: DAPO's overlong punishment as an extra objective, or None.
    state_shardings: the shardings the policy state keeps (`learner.jit_update`); None jits
      the update without output shardings.
    recompute_old_logprobs: recompute log pi_old by a full forward (the same computation as
      the loss, so the first minibatch starts at ratio exactly 1) instead of using the
      sampler's log-probs (equal in exact arithmetic when sampling is plain softmax at the
      loss temperature; with top-k/top-p they are the filtered distribution's).
  """

  def __init__(self, engine: RolloutEngine, rewarder: RecipeRewarder, tokenizer: Any,
               sampling: SamplingConfig, config: learner_lib.LearnerConfig, *,
               reference: TrainState | None = None, overlong: OverlongConfig | None = None,
               state_shardings: Any = None, recompute_old_logprobs: bool = True):
    if config.loss.kl_coef != 0.0 and reference is None:
      raise ValueError(f"loss.kl_coef={config.loss.kl_coef} needs a reference policy state.")
    self.engine = engine
    self.rewarder = rewarder
    self.tokenizer = tokenizer
    self.sampling = sampling
    self.config = config
    self.reference = reference
    self.overlong = overlong
    self._update = (learner_lib.update if state_shardings is None
                    else learner_lib.jit_update(state_shardings))
    self.recompute_old_logprobs = recompute_old_logprobs

  def _logprobs(self, state: TrainState, rollout: types.Rollout) -> jax.Array:
    return learner_lib.completion_logprobs(state, rollout,
                                           temperature=self.config.loss.temperature,
                                           backend=self.config.logprob_backend)

  def step(self, state: TrainState, prompts: types.PromptBatch, meta: types.BatchMeta,
           step: int, key: jax.Array) -> RLStepResult:
    """One RL step on a batch of prompts (see the module docstring)."""
    key_rollout, key_update = jax.random.split(jax.random.fold_in(key, step))
    self.engine.update_params(state.params)
    rollout = self.engine.generate(prompts, key_rollout, self.sampling)
    completions = decode_completions(rollout, self.tokenizer,
                                     eos_ids=self.sampling.eos_ids)
    prompt_index = np.asarray(rollout.prompt_index)
    examples = _sample_examples(meta, prompt_index)
    rewards = score_rewards(self.rewarder, completions, examples, step)
    if self.overlong is not None:
      rewards = with_overlong(rewards, rollout.lengths, rollout.sample_mask, self.overlong)
    num_groups = rollout.tokens.shape[0] // rollout.group_size
    adv = compute_advantages(rewards.rewards_nk, jnp.asarray(prompt_index, jnp.int32),
                             rewards.weights_nk, self.config.advantage,
                             sample_mask_n=rollout.sample_mask, num_groups=num_groups)
    old_logp = (self._logprobs(state, rollout) if self.recompute_old_logprobs
                else rollout.logprobs)
    ref_logp = (self._logprobs(self.reference, rollout)
                if self.config.loss.kl_coef != 0.0 else None)
    batch = learner_lib.LearnerBatch(rollout, old_logp, adv.advantages, adv.weights,
                                     adv.sample_mask, ref_logp)
    state, update_metrics = self._update(state, batch, key_update, self.config)
    metrics = {
        **_per_objective("learner", update_metrics, rewards.names),
        **_per_objective("advantages", adv.stats, rewards.names),
        **_reward_metrics(rewards, examples),
        **rollout_metrics(rollout),
    }
    return RLStepResult(state, metrics, tuple(completions), examples, rewards)


def _per_objective(prefix: str, metrics: dict[str, Any], names: Sequence[str]
                   ) -> dict[str, Any]:
  """Scalars as `prefix/name`; per-objective vectors [K] as `prefix/name/<objective>` (a
  vector of one combined column as `prefix/name`)."""
  out = {}
  for key, value in jax.device_get(metrics).items():
    value = np.asarray(value)
    if value.ndim == 0:
      out[f"{prefix}/{key}"] = value
    elif value.shape == (1,):
      out[f"{prefix}/{key}"] = value[0]
    elif value.shape == (len(names),):
      out.update({f"{prefix}/{key}/{n}": v for n, v in zip(names, value)})
    else:
      raise ValueError(f"metric {prefix}/{key} has shape {value.shape}; expected a scalar or "
                       f"one value per objective {tuple(names)}.")
  return out


def _reward_metrics(rewards: RewardMatrix, examples: Sequence[types.Example | None]
                    ) -> dict[str, float]:
  valid = np.flatnonzero([e is not None for e in examples])
  real = dataclasses.replace(rewards, rewards_nk=rewards.rewards_nk[valid],
                             weights_nk=rewards.weights_nk[valid],
                             routed_nk=rewards.routed_nk[valid])
  return reward_metrics(real, [examples[i] for i in valid])


def rollout_metrics(rollout: types.Rollout) -> dict[str, float]:
  """Lengths and truncation over the real samples of a rollout."""
  mask = np.asarray(rollout.sample_mask, bool)
  if not mask.any():
    return {}
  lengths = np.asarray(rollout.lengths)[mask]
  return {
      "rollout/length_mean": float(lengths.mean()),
      "rollout/length_max": float(lengths.max()),
      "rollout/truncated_fraction": float(np.asarray(rollout.truncated)[mask].mean()),
  }
