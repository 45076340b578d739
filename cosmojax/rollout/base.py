"""The rollout engine interface: generate, per-token log-probs, update parameters.

The RL learner codes against `RolloutEngine` only, so that the JAX sampler of this package
(`JaxRolloutEngine`) can be swapped for an external one (vLLM, SGLang) that fills the same
`Rollout` pytree (tunix `rollout/base_rollout.py`).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import jax

from cosmojax import types


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How completions are sampled (hashable).

  Per step, with logits z of the next token (HF `generate` order of the filters):
    z' = z / temperature; keep the top_k largest z' (top_k = 0: all); of those, keep the
    smallest prefix (by decreasing probability) whose softmax mass reaches top_p
    (top_p = 1: all); sample from softmax(z') over the kept tokens. Ties with the last kept
    value are kept too. `greedy` takes argmax z instead (temperature and filters unused).

  Attributes:
    group_size: G, completions per prompt (N = B * G samples).
    max_new_tokens: at most this many completion tokens per sample. It is a dynamic
      argument: changing it within one completion bucket does not recompile.
    temperature: > 0. Dynamic (no recompilation).
    top_k: 0 (off) or the number of most likely tokens kept. Static.
    top_p: in (0, 1]; 1 is off. Its value is dynamic; whether it is < 1 is static.
    greedy: argmax decoding.
    eos_ids: token ids that end a sample (the EOS token is part of the completion).
    stop_sequences: token-id sequences that end a sample once the completion ends with one
      (checked on device against the tail of each row; the sequence is part of the
      completion). `cosmojax.rollout.stop_token_sequences` turns stop strings into them.
  """

  group_size: int = 1
  max_new_tokens: int = 64
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  greedy: bool = False
  eos_ids: tuple[int, ...] = ()
  stop_sequences: tuple[tuple[int, ...], ...] = ()

  def __post_init__(self):
    if self.group_size < 1 or self.max_new_tokens < 1:
      raise ValueError(f"SamplingConfig: group_size ({self.group_size}) and max_new_tokens "
                       f"({self.max_new_tokens}) must be >= 1.")
    if not self.greedy and not self.temperature > 0:
      raise ValueError(f"SamplingConfig.temperature must be > 0 (got {self.temperature}); "
                       "use greedy=True for argmax decoding.")
    if self.top_k < 0 or not 0 < self.top_p <= 1:
      raise ValueError(f"SamplingConfig: top_k ({self.top_k}) must be >= 0 and top_p "
                       f"({self.top_p}) in (0, 1].")
    object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))
    object.__setattr__(self, "stop_sequences",
                       tuple(tuple(int(i) for i in s) for s in self.stop_sequences))
    if any(len(s) == 0 for s in self.stop_sequences):
      raise ValueError("SamplingConfig.stop_sequences: empty stop sequence.")


class RolloutEngine(abc.ABC):
  """Generates G completions per prompt and scores completions under the current policy."""

  @abc.abstractmethod
  def generate(self, batch: types.PromptBatch, key: jax.Array,
               config: SamplingConfig) -> types.Rollout:
    """Samples `config.group_size` completions for every prompt of `batch`.

    Args:
      batch: left-padded prompts (images included) from `cosmojax.data.Collator.prompts`.
      key: a PRNG key; the same key, batch, config and parameters give the same rollout.
      config: sampling controls.

    Returns:
      The `Rollout` (shapes in its docstring).
    """

  @abc.abstractmethod
  def logprobs(self, rollout: types.Rollout, temperature: float = 1.0) -> jax.Array:
    """log pi(token) of every completion token of `rollout` under the current parameters.

    The full forward over prompt + completion, logits divided by `temperature`, no top-k /
    top-p filtering (the learner's old / reference log-probs).  # [N, T_n] float32, 0 where
    completion_mask is 0
    """

  @abc.abstractmethod
  def update_params(self, state: Any) -> None:
    """Replaces the policy parameters (an `nnx.State` of the same structure)."""
