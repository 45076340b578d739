"""Supervised fine-tuning: masked cross-entropy on the assistant tokens.

Used for CoT-SFT (SafeWork-R1), perception-augmented SFT (VTPerception-R1's
description/think/answer targets) and CoSMo-RL's SFT stage alike; they differ only in data.

    loss = -(1 / sum_t m_t) sum_{b,t} m_{b,t} log p_theta(x_{b,t} | x_{b,<t})

with m the assistant-token mask. The log-probs come from the fused LM-head kernel
(`kernels.fused_pg_loss.fused_token_logprobs`), so the [B, T, V] logits are never
materialized, in the forward or the backward pass.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cosmojax.models import inputs as inputs_lib
from cosmojax.train_state import TrainState
from kernels.fused_pg_loss import fused_token_logprobs


@flax.struct.dataclass
class SFTStepBatch:
  """Device side of an SFT batch: model inputs and the [B, T] assistant-token mask."""

  inputs: inputs_lib.ModelInputs
  loss_mask: Any  # [B, T] 1 where input_ids[b, t] is a target token


def sft_step_batch(batch: Any, model_config: Any) -> SFTStepBatch:
  """Host side: an `SFTBatch` from the data pipeline -> `SFTStepBatch` (positions, vision
  metadata computed here, outside jit)."""
  return SFTStepBatch(inputs_lib.prepare_inputs(batch, model_config),
                      jax.numpy.asarray(batch.loss_mask, jnp.int32))


def sft_loss(params: Any, state: TrainState, batch: SFTStepBatch, *, backend: str = "auto"
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Token-mean masked cross-entropy (module docstring) and its metrics."""
  model = state.model(params)
  hidden_btd = inputs_lib.hidden_states(model, batch.inputs)
  # Position t predicts token t + 1.
  targets_bt = batch.inputs.input_ids[:, 1:]
  mask_bt = batch.loss_mask[:, 1:].astype(jnp.float32)
  logp_bt, _ = fused_token_logprobs(hidden_btd[:, :-1], model.lm_head_matrix(), targets_bt,
                                    with_entropy=False, backend=backend)
  num_tokens = jnp.sum(mask_bt)
  nll = -jnp.sum(jnp.where(mask_bt > 0, logp_bt, 0.0)) / jnp.maximum(num_tokens, 1.0)
  return nll, {"loss": nll, "num_tokens": num_tokens}


def train_step(state: TrainState, batch: SFTStepBatch, rng: jax.Array, *,
               backend: str = "auto") -> tuple[TrainState, dict[str, jax.Array]]:
  """One SFT update: (state, batch, rng) -> (state, metrics). `rng` is unused (no dropout)
  and kept for the uniform trainer signature. A non-finite loss or gradient skips the update
  and reports `skipped`. Not jitted: `sft_step` is, and `jit_train_step` with explicit
  output shardings."""
  del rng
  grad_fn = jax.value_and_grad(sft_loss, has_aux=True)
  (loss, metrics), grads = grad_fn(state.params, state, batch, backend=backend)
  state, update_metrics = state.apply_gradients(grads, loss)
  return state, {**metrics, **update_metrics}


sft_step = jax.jit(train_step, static_argnames=("backend",), donate_argnums=(0,))


def jit_train_step(state_shardings: Any):
  """`train_step` jitted with the state donated and given back with `state_shardings`: the
  state keeps its sharding from step to step (and across a checkpoint restore), so every
  step runs the same executable."""
  return jax.jit(train_step, static_argnames=("backend",), donate_argnums=(0,),
                 out_shardings=(state_shardings, None))


@functools.partial(jax.jit, static_argnames=("backend",))
def sft_eval_loss(state: TrainState, batch: SFTStepBatch, *, backend: str = "auto"
                  ) -> dict[str, jax.Array]:
  """The loss metrics of a batch without an update (held-out loss)."""
  return sft_loss(state.params, state, batch, backend=backend)[1]


def batch_shardings(batch: SFTStepBatch, mesh: Mesh) -> SFTStepBatch:
  """Shardings of an SFT step batch: rows over the data-parallel axes, images replicated."""
  return SFTStepBatch(inputs_lib.input_shardings(batch.inputs, mesh),
                      NamedSharding(mesh, PartitionSpec(inputs_lib.DATA_AXES)))
