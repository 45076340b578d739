"""Tests for the SFT trainer: loss against an independent computation, learning, non-finite
steps, and a sharded step equal to the single-device step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cosmojax import models
from cosmojax.parallel import make_mesh, shard_state, state_shardings
from cosmojax.sft import trainer
from cosmojax.train_state import TrainState
from tests import common


@pytest.fixture(scope="module")
def setup():
  config = common.tiny_vl_model_config()
  examples = (common.tiny_examples("count", 6, num_images=1)
              + common.tiny_examples("count", 2, num_images=0, seed=3))
  batches = [trainer.sft_step_batch(b, config) for b in common.tiny_sft_batches(examples, 4)]
  # One batch of all 8 examples, so that rows split over up to 8 data-parallel devices.
  batches.append(trainer.sft_step_batch(common.tiny_sft_batches(examples, 8)[0], config))
  return config, batches


def _state(config, lr=3e-3):
  model = models.Qwen2_5_VL(config, rngs=nnx.Rngs(0))
  return TrainState.create(model, optax.adam(lr))


def test_loss_matches_full_logits_cross_entropy(setup):
  config, batches = setup
  state, batch = _state(config), batches[0]
  loss, metrics = trainer.sft_loss(state.params, state, batch, backend="xla")
  inputs = batch.inputs
  logits = state.model()(inputs.input_ids, inputs.attention_mask, inputs.pixel_values,
                         position_ids=inputs.position_ids, vision_meta=inputs.vision_meta)
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64)[:, :-1], axis=-1)
  targets = np.asarray(inputs.input_ids)[:, 1:]
  token_logp = np.take_along_axis(np.asarray(logp), targets[..., None], -1)[..., 0]
  mask = np.asarray(batch.loss_mask)[:, 1:]
  expected = -(token_logp * mask).sum() / mask.sum()
  assert float(metrics["num_tokens"]) == mask.sum() > 0
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_training_reduces_the_loss(setup):
  config, batches = setup
  state = _state(config)
  first = None
  for step in range(12):
    state, metrics = trainer.sft_step(state, batches[step % 2], jax.random.key(step))
    first = float(metrics["loss"]) if first is None else first
  final = np.mean([float(trainer.sft_eval_loss(state, b)["loss"]) for b in batches[:2]])
  assert int(state.step) == 12 and not bool(metrics["skipped"])
  assert final < 0.7 * first, (first, final)


def test_non_finite_step_is_skipped(setup):
  config, batches = setup
  state = _state(config)
  before = jax.tree.map(np.asarray, (state.params, state.opt_state))
  bad_inputs = batches[0].inputs.replace(
      pixel_values=jnp.full_like(batches[0].inputs.pixel_values, jnp.nan))
  state, metrics = trainer.sft_step(state, batches[0].replace(inputs=bad_inputs),
                                    jax.random.key(0))
  assert bool(metrics["skipped"]) and int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.asarray, (state.params, state.opt_state)))
  state, metrics = trainer.sft_step(state, batches[0], jax.random.key(1))
  assert not bool(metrics["skipped"]) and int(state.step) == 1


@pytest.mark.parametrize("mesh_shape, tx, atol", [
    # SGD: the parameter change is lr * gradient, so parameters compare to float32 precision.
    (dict(data=2, fsdp=2, tensor=2), optax.sgd(0.1), 1e-6),
    # Adam's first step is ~ lr * sign(g): reduction-order noise in near-zero gradients can
    # move a parameter by up to ~lr, hence a tolerance well below lr = 3e-3 but above 1e-6.
    (dict(data=1, fsdp=8), optax.adam(3e-3), 2e-5),
])
def test_sharded_step_equals_single_device(setup, mesh_shape, tx, atol):
  config, batches = setup
  batch = batches[-1]
  model = lambda: models.Qwen2_5_VL(config, rngs=nnx.Rngs(0))
  single, single_metrics = trainer.sft_step(TrainState.create(model(), tx), batch,
                                            jax.random.key(0))
  mesh = make_mesh(**mesh_shape)
  params = shard_state(nnx.split(model())[1], mesh)
  state = TrainState.create(model(), tx).replace(params=params, opt_state=tx.init(params))
  sharded_batch = jax.device_put(batch, trainer.batch_shardings(batch, mesh))
  sharded, metrics = trainer.sft_step(state, sharded_batch, jax.random.key(0))
  # Parameters really are split over the mesh.
  specs = jax.tree.leaves(state_shardings(sharded.params, mesh))
  assert any(s.spec != jax.sharding.PartitionSpec() for s in specs)
  np.testing.assert_allclose(float(metrics["loss"]), float(single_metrics["loss"]), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol),
               jax.tree.map(np.asarray, single.params), jax.tree.map(np.asarray, sharded.params))
