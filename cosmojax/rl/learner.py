"""The RL learner's pure, jitted pieces: log-probs of a rollout and the policy update.

One RL step (the driver in `cosmojax.rl.trainer` joins them):

    rollout = engine.generate(prompts)                       # device, pure
    R[N, K] = rewards(decode(rollout))                       # host
    A, w = compute_advantages(R, groups, weights)            # device, pure
    state = update(state, LearnerBatch(rollout, old_logp, A, w, ...), rng)   # device, pure

`update` runs `num_epochs` passes over the rollout, each split into `num_minibatches`
minibatches of whole groups (shuffled per epoch), one optimizer step per minibatch, all inside
one `lax.scan`: the step function is `(state, batch, rng) -> (state, metrics)`.

Per minibatch the policy runs the vision tower once over the prompt batch's images, gives each
sample its prompt's image embeddings, runs the decoder over prompt + completion, and feeds the
hidden states of the completion positions and the LM head to the fused multiobjective policy
loss (`kernels.fused_pg_loss`): the [N, T, V] logits are never materialized.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from cosmojax import types
from cosmojax.models.configs import Qwen2_5_VLConfig
from cosmojax.rl.advantages import AdvantageConfig
from cosmojax.rl.losses import PolicyLossConfig
from cosmojax.train_state import TrainState
from kernels.fused_pg_loss import fused_pg_loss, fused_token_logprobs


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
  """How a rollout batch updates the policy (hashable: a static jit argument).

  Attributes:
    loss: the policy loss (CPGD by default; `PolicyLossConfig.preset(...)` for others).
    advantage: the advantage estimator and multiobjective mode.
    num_epochs: passes over each rollout batch.
    num_minibatches: optimizer steps per pass; each minibatch holds whole groups, so the
      number of prompts must be a multiple of it.
    shuffle: shuffle the groups across minibatches every epoch.
    logprob_backend: backend of the fused log-prob kernel ("auto", "xla", "pallas_gpu", ...).
  """

  loss: PolicyLossConfig = PolicyLossConfig()
  advantage: AdvantageConfig = AdvantageConfig()
  num_epochs: int = 1
  num_minibatches: int = 1
  shuffle: bool = True
  logprob_backend: str = "auto"

  def __post_init__(self):
    if self.num_epochs < 1 or self.num_minibatches < 1:
      raise ValueError(f"LearnerConfig: num_epochs ({self.num_epochs}) and num_minibatches "
                       f"({self.num_minibatches}) must be >= 1.")


@flax.struct.dataclass
class LearnerBatch:
  """A scored rollout, ready for the policy update.

  Attributes:
    rollout: the sampled completions (`cosmojax.types.Rollout`, N = B * G samples).
    old_logp: [N, T_n] log pi_old of the completion tokens (behaviour policy).
    advantages: [N, K] per-objective advantages (K = 1 after sum_then_normalize); NaN where
      an objective does not apply.
    weights: [K] or [N, K] the objective weights the loss combines advantages with.
    sample_mask: [N] bool samples that train (padding prompts, samples without objective and
      groups dropped by dynamic sampling are False).
    ref_logp: [N, T_n] log pi_ref, when the loss has a KL term to a reference; else None.
  """

  rollout: types.Rollout
  old_logp: Any
  advantages: Any
  weights: Any
  sample_mask: Any
  ref_logp: Any = None


def _positions(model: Any, position_ids_3nt: jax.Array) -> jax.Array:
  """The model's position ids: M-RoPE [3, N, T] for Qwen2.5-VL, [N, T] for text models."""
  if isinstance(model.config, Qwen2_5_VLConfig):
    return position_ids_3nt
  return position_ids_3nt[0]


def sample_image_embeds(prompt_embeds_md: jax.Array, prompt_ids_bt: jax.Array,
                        prompt_index_n: jax.Array, image_token_id: int, num_rows: int
                        ) -> jax.Array:
  """Image embeddings for samples `prompt_index_n` (any subset, any order) of a rollout.

  The model fills the k-th image placeholder of its (flattened) input with row k of
  `image_embeds`. Prompt b's c_b placeholders are rows [o_b, o_b + c_b) of `prompt_embeds`
  (o_b = c_0 + ... + c_{b-1}); a sample of prompt b repeats them. Output row r belongs to
  the sample s whose cumulative placeholder range holds r and is prompt row
  o_{p(s)} + (r - start of s). Rows past the samples' placeholders are filler.

  Args:
    prompt_embeds_md: [M, D] `encode_images` output of the prompt batch.
    prompt_ids_bt: [B, T_p] the prompt token ids.
    prompt_index_n: [n] the prompt of each sample.
    image_token_id: the placeholder id.
    num_rows: static output size, at least the samples' placeholder count: G * M for whole
      groups of G samples of distinct prompts (their prompts hold at most M placeholders).

  Returns:
    [num_rows, D].
  """
  m = prompt_embeds_md.shape[0]
  n = prompt_index_n.shape[0]
  counts_b = jnp.sum(prompt_ids_bt == image_token_id, axis=1).astype(jnp.int32)
  starts_b = jnp.cumsum(counts_b) - counts_b
  counts_n = counts_b[prompt_index_n]
  ends_n = jnp.cumsum(counts_n)
  r = jnp.arange(num_rows, dtype=jnp.int32)
  s = jnp.minimum(jnp.searchsorted(ends_n, r, side="right"), n - 1)
  within = r - (ends_n[s] - counts_n[s])
  rows = jnp.clip(starts_b[prompt_index_n[s]] + within, 0, m - 1)
  return prompt_embeds_md[rows]


def completion_hidden(model: Any, rollout: types.Rollout, rows: jax.Array) -> jax.Array:
  """Hidden states at the positions that predict the completion tokens of samples `rows`.

  Position t predicts token t + 1, so for completions starting at T_p these are positions
  T_p - 1 .. T - 2.  # [n, T_n, hidden]
  """
  tp = rollout.prompt_length
  kwargs = {}
  if rollout.pixel_values is not None:
    prompt_embeds = model.encode_images(rollout.pixel_values, vision_meta=rollout.vision_meta)
    # `rows` are whole groups of distinct prompts: at most G * M placeholders.
    kwargs["image_embeds"] = sample_image_embeds(
        prompt_embeds, rollout.tokens[::rollout.group_size, :tp], rollout.prompt_index[rows],
        model.config.image_token_id, rollout.group_size * prompt_embeds.shape[0])
  hidden = model.hidden_states(
      rollout.tokens[rows], rollout.attention_mask[rows],
      position_ids=_positions(model, rollout.position_ids[:, rows]), **kwargs)
  return hidden[:, tp - 1:-1]


@functools.partial(jax.jit, static_argnames=("temperature", "backend"))
def completion_logprobs(state: TrainState, rollout: types.Rollout, *, temperature: float = 1.0,
                        backend: str = "auto") -> jax.Array:
  """log pi(completion token) under `state`'s parameters (old or reference policy).

  Softmax at `temperature`, no top-k/top-p filtering; 0 where completion_mask is 0.
  # [N, T_n] float32
  """
  model = state.model()
  rows = jnp.arange(rollout.tokens.shape[0])
  hidden = completion_hidden(model, rollout, rows)
  logp, _ = fused_token_logprobs(hidden, model.lm_head_matrix(),
                                 rollout.tokens[:, rollout.prompt_length:],
                                 temperature=temperature, with_entropy=False, backend=backend)
  return jnp.where(rollout.completion_mask > 0, logp, 0.0)


def policy_loss(params: Any, state: TrainState, batch: LearnerBatch, rows: jax.Array,
                config: LearnerConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The fused multiobjective policy loss of samples `rows` (see `kernels.fused_pg_loss`)."""
  model = state.model(params)
  rollout = batch.rollout
  hidden = completion_hidden(model, rollout, rows)
  mask = rollout.completion_mask[rows] * batch.sample_mask[rows, None]
  weights = batch.weights if batch.weights.ndim == 1 else batch.weights[rows]
  ref_logp = None if batch.ref_logp is None else batch.ref_logp[rows]
  return fused_pg_loss(hidden, model.lm_head_matrix(), rollout.tokens[rows, rollout.prompt_length:],
                       batch.old_logp[rows], batch.advantages[rows], weights, mask, config.loss,
                       ref_logp=ref_logp, backend=config.logprob_backend)


def minibatch_rows(key: jax.Array, num_groups: int, group_size: int, num_minibatches: int,
                   shuffle: bool) -> jax.Array:
  """Sample rows of each minibatch: whole groups, shuffled when `shuffle`.
  # [num_minibatches, N / num_minibatches] int32"""
  if num_groups % num_minibatches:
    raise ValueError(f"LearnerConfig.num_minibatches={num_minibatches} must divide the "
                     f"{num_groups} prompts (groups) of a rollout batch.")
  groups = jax.random.permutation(key, num_groups) if shuffle else jnp.arange(num_groups)
  rows = groups[:, None] * group_size + jnp.arange(group_size)[None, :]
  return rows.reshape(num_minibatches, -1).astype(jnp.int32)


def update_step(state: TrainState, batch: LearnerBatch, rng: jax.Array, config: LearnerConfig
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """Policy update on one rollout batch: (state, batch, rng) -> (state, metrics). Not
  jitted: `update` is, and `jit_update` with explicit output shardings.

  `num_epochs * num_minibatches` optimizer steps; a step whose loss or gradient is not
  finite is skipped (state unchanged) and counted in `skipped`. Metrics are the loss
  diagnostics averaged over the steps, `skipped` summed, `grad_norm` averaged.
  """
  rollout = batch.rollout
  num_groups = rollout.tokens.shape[0] // rollout.group_size
  keys = jax.random.split(rng, config.num_epochs)
  rows = jnp.concatenate([
      minibatch_rows(k, num_groups, rollout.group_size, config.num_minibatches, config.shuffle)
      for k in keys])  # [epochs * minibatches, rows per minibatch]

  def one_step(state, rows_m):
    grad_fn = jax.value_and_grad(policy_loss, has_aux=True)
    (loss, diagnostics), grads = grad_fn(state.params, state, batch, rows_m, config)
    state, update_metrics = state.apply_gradients(grads, loss)
    return state, {**diagnostics, **update_metrics}

  state, per_step = jax.lax.scan(one_step, state, rows)
  metrics = jax.tree.map(lambda x: jnp.mean(x.astype(jnp.float32), axis=0), per_step)
  metrics["skipped"] = jnp.sum(per_step["skipped"].astype(jnp.int32))
  metrics["optimizer_steps"] = jnp.asarray(rows.shape[0], jnp.int32)
  return state, metrics


update = jax.jit(update_step, static_argnames=("config",), donate_argnums=(0,))


def jit_update(state_shardings: Any):
  """`update_step` jitted with the state donated and given back with `state_shardings` (the
  state keeps one sharding, fresh or restored: one executable for every step)."""
  return jax.jit(update_step, static_argnames=("config",), donate_argnums=(0,),
                 out_shardings=(state_shardings, None))
