"""Tests of cosmojax.checkpointing: round trips (sharded too), retention, corruption errors."""

from __future__ import annotations

import glob
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from cosmojax import optim
from cosmojax.checkpointing import (Checkpointer, CheckpointError, TrainingCheckpoint,
                                    abstract_target)
from cosmojax.eval import METRICS_FILE, MetricWriter, read_jsonl
from cosmojax.parallel import axes, make_mesh, sharded_init, state_shardings


class _Tiny(nnx.Module):
  """Two layers whose parameters name logical axes, so that meshes shard them."""

  def __init__(self, rngs: nnx.Rngs):
    init = nnx.initializers.normal(1.0)
    self.up = nnx.Linear(8, 16, kernel_init=nnx.with_partitioning(init, (axes.EMBED, axes.MLP)),
                         rngs=rngs)
    self.down = nnx.Linear(16, 8, kernel_init=nnx.with_partitioning(init, (axes.MLP, axes.EMBED)),
                           rngs=rngs)
    self.norm = nnx.RMSNorm(8, rngs=rngs)


def _state(seed: int = 0):
  with nnx.use_eager_sharding(False):  # unsharded: logical names stay metadata
    params = nnx.state(_Tiny(nnx.Rngs(seed)), nnx.Param)
  tx = optim.make_optimizer({"learning_rate": 1e-2, "weight_decay": 0.1})
  opt_state = tx.init(params)
  # One update, so that the moments and the step counter are not their initial values.
  grads = jax.tree.map(jnp.ones_like, params)
  params, opt_state, _ = optim.apply_gradients(tx, params, opt_state, grads, jnp.float32(1.0))
  return params, opt_state


def _assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def _save_one(directory, step: int = 3, **kwargs) -> tuple:
  params, opt_state = _state()
  with Checkpointer(directory) as checkpointer:
    checkpointer.save(TrainingCheckpoint(step, params, opt_state, stage="sft", **kwargs))
  return params, opt_state


@pytest.mark.parametrize("data_state, rng", [
    ({"epoch": 1, "position": [3, 7], "mixture": {"a": 0.5}}, jax.random.key(42)),
    (b'{"next_index": 12}\x00\xff', jax.random.PRNGKey(7)),
])
def test_round_trip_of_every_item(tmp_path, data_state, rng):
  params, opt_state = _state()
  metadata = {"config": {"lr": 1e-2, "stages": ["sft", "rl"]}, "skipped_steps": 2}
  checkpointer = Checkpointer(tmp_path)
  assert checkpointer.latest_step() is None
  assert checkpointer.save(TrainingCheckpoint(
      step=5, params=params, opt_state=opt_state, stage="rl_general", stage_index=1,
      data_state=data_state, rng=rng, metadata=metadata))
  checkpointer.close()

  # A new checkpointer, as after a restart; targets are abstract (no values).
  restored = Checkpointer(tmp_path).restore(
      params=jax.eval_shape(lambda: params), opt_state=jax.eval_shape(lambda: opt_state))
  assert restored.step == 5
  assert (restored.stage, restored.stage_index) == ("rl_general", 1)
  assert restored.data_state == data_state and type(restored.data_state) is type(data_state)
  assert restored.metadata == metadata
  _assert_trees_equal(restored.params, params)
  _assert_trees_equal(restored.opt_state, opt_state)
  assert isinstance(restored.params, nnx.State)
  assert restored.rng.dtype == rng.dtype
  # The restored key draws the same numbers.
  np.testing.assert_array_equal(jax.random.uniform(restored.rng, (3,)),
                                jax.random.uniform(rng, (3,)))


def test_sharded_state_restores_into_a_different_sharding(tmp_path):
  tx = optim.make_optimizer({"learning_rate": 1e-2})
  mesh_a = make_mesh(data=1, fsdp=8, tensor=1)
  model = sharded_init(lambda: _Tiny(nnx.Rngs(0)), mesh_a)
  params = nnx.state(model, nnx.Param)
  opt_state = tx.init(params)
  assert params["up"]["kernel"][...].addressable_shards[0].data.shape == (1, 16)
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(TrainingCheckpoint(1, params, opt_state, rng=jax.random.key(0)))

  mesh_b = make_mesh(data=2, fsdp=2, tensor=2)
  with nnx.use_eager_sharding(False):
    abstract = nnx.state(nnx.eval_shape(lambda: _Tiny(nnx.Rngs(0))), nnx.Param)
  shardings = state_shardings(abstract, mesh_b)
  target = abstract_target(abstract, mesh_b)
  opt_target = abstract_target(jax.eval_shape(tx.init, abstract), mesh_b)
  restored = Checkpointer(tmp_path).restore(params=target, opt_state=opt_target)

  _assert_trees_equal(restored.params, params)
  _assert_trees_equal(restored.opt_state, opt_state)
  for leaf, sharding in zip(jax.tree.leaves(restored.params), jax.tree.leaves(shardings)):
    assert leaf.sharding == sharding
  kernel = restored.params["up"]["kernel"][...]
  assert kernel.sharding.spec == P(axes.FSDP, axes.TENSOR)
  assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (4, 8)
  # Adam's moments follow the target shardings of their parameters.
  specs = {"up": P(axes.FSDP, axes.TENSOR), "down": P(axes.TENSOR, axes.FSDP)}
  moments = [(jax.tree_util.keystr(path), leaf)
             for path, leaf in jax.tree_util.tree_flatten_with_path(restored.opt_state)[0]
             if leaf.ndim == 2]
  assert len(moments) == 4  # mu and nu of the two kernels
  for name, leaf in moments:
    assert leaf.sharding.mesh.shape == mesh_b.shape
    assert leaf.sharding.spec == specs["up" if "['up']" in name else "down"]


def test_keep_last_n_and_save_interval(tmp_path):
  params, opt_state = _state()
  checkpointer = Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2)
  written = [s for s in range(1, 8)
             if checkpointer.save(TrainingCheckpoint(s, params, opt_state))]
  # The first save always writes, then multiples of the interval.
  assert written == [1, 2, 4, 6]
  assert checkpointer.save(TrainingCheckpoint(7, params, opt_state), force=True)
  checkpointer.wait_until_finished()
  assert checkpointer.all_steps() == [6, 7] and checkpointer.latest_step() == 7
  checkpointer.close()
  assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [6, 7]
  assert Checkpointer(tmp_path).restore(params=params).step == 7
  with pytest.raises(CheckpointError,
                     match=r"no checkpoint of step 4 .* available steps: \[6, 7\]"):
    Checkpointer(tmp_path).restore(4, params=params)


def test_async_save_copies_before_returning(tmp_path):
  params, opt_state = _state()
  expected = jax.tree.map(np.asarray, (params, opt_state))
  checkpointer = Checkpointer(tmp_path, async_save=True)
  checkpointer.save(TrainingCheckpoint(1, params, opt_state))
  # A trainer donates its state right after saving: the buffers are gone.
  for leaf in jax.tree.leaves((params, opt_state)):
    leaf.delete()
  checkpointer.wait_until_finished()
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), expected)
  restored = checkpointer.restore(params=target[0], opt_state=target[1])
  _assert_trees_equal((restored.params, restored.opt_state), expected)


def test_unfinished_save_is_ignored_and_cleaned_up(tmp_path):
  params, _ = _save_one(tmp_path, step=3)
  # What a run killed in the middle of saving step 4 leaves behind.
  unfinished = tmp_path / "4.orbax-checkpoint-tmp-1700000000"
  (unfinished / "params").mkdir(parents=True)
  (unfinished / "params" / "_METADATA").write_text("{")
  checkpointer = Checkpointer(tmp_path)
  assert checkpointer.latest_step() == 3
  assert checkpointer.restore(params=params).step == 3
  assert not unfinished.exists()


def test_no_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(CheckpointError, match=f"no checkpoint in {tmp_path}"):
    Checkpointer(tmp_path).restore(params={"w": jnp.zeros(2)})


def test_shape_mismatch_names_the_leaf(tmp_path):
  params, _ = _save_one(tmp_path)
  bad = jax.tree_util.tree_map_with_path(
      lambda path, x: jax.ShapeDtypeStruct((8, 32) if "up']['kernel" in jax.tree_util.keystr(path)
                                           else x.shape, x.dtype), params)
  with pytest.raises(CheckpointError, match=r"step 3, item 'params': incompatible.*"
                     r"up\.kernel\.value: saved \(8, 16\), target \(8, 32\)"):
    Checkpointer(tmp_path).restore(params=bad)


def test_structure_mismatch_names_missing_and_extra_leaves(tmp_path):
  params, _ = _save_one(tmp_path)
  other = {"up": params["up"], "extra": {"w": jnp.zeros(3)}}
  with pytest.raises(CheckpointError, match=r"1 target leaves are not in the checkpoint "
                     r"\(extra\.w\).*3 saved leaves are not in the target"):
    Checkpointer(tmp_path).restore(params=other)


# After a failed tensorstore read, orbax's private event loop may be closed before a late
# callback of the failed read fires; Python reports that as an unraisable exception.
_LATE_CALLBACK = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_LATE_CALLBACK
def test_truncated_array_file_is_a_clear_error(tmp_path):
  params, _ = _save_one(tmp_path)
  files = glob.glob(os.path.join(tmp_path, "3", "params", "d", "*"))
  assert files
  for name in files:
    with open(name, "r+b") as f:
      f.truncate(8)
  with pytest.raises(CheckpointError, match=rf"checkpoint {tmp_path} step 3, item 'params': "
                     "(metadata )?cannot be"):
    Checkpointer(tmp_path).restore(params=params)


def test_deleted_item_is_a_clear_error(tmp_path):
  params, opt_state = _save_one(tmp_path)
  shutil.rmtree(os.path.join(tmp_path, "3", "opt_state"))
  checkpointer = Checkpointer(tmp_path)
  # The parameters alone still restore.
  _assert_trees_equal(checkpointer.restore(params=params).params, params)
  with pytest.raises(CheckpointError, match=r"step 3, item 'opt_state': missing"):
    checkpointer.restore(params=params, opt_state=opt_state)


def test_corrupt_metadata_is_a_clear_error(tmp_path):
  params, _ = _save_one(tmp_path)
  with open(os.path.join(tmp_path, "3", "meta", "metadata"), "r+b") as f:
    f.truncate(5)
  with pytest.raises(CheckpointError, match=r"step 3, item 'meta': cannot be restored "
                     r"\(JSONDecodeError"):
    Checkpointer(tmp_path).restore(params=params)


def test_unserializable_metadata_fails_at_save_time(tmp_path):
  params, _ = _state()
  with Checkpointer(tmp_path) as checkpointer:
    with pytest.raises(TypeError, match="TrainingCheckpoint.metadata must be JSON"):
      checkpointer.save(TrainingCheckpoint(1, params, metadata={"x": object()}))
    assert checkpointer.latest_step() is None


def _train(workdir, last_step: int) -> Any:
  """A tiny driver loop: resumes from the latest checkpoint if any, trains to `last_step`,
  writing metrics before each (interval) checkpoint, as the trainers do."""
  tx = optim.make_optimizer({"learning_rate": 0.1, "schedule": "cosine", "warmup_steps": 2,
                             "total_steps": 6})
  step_fn = jax.jit(lambda p, s, g, l: optim.apply_gradients(tx, p, s, g, l))
  data = np.arange(24, dtype=np.float32).reshape(8, 3) / 10
  params = {"w": jnp.zeros(3)}
  opt_state, rng, position, start = tx.init(params), jax.random.key(0), 0, 0
  checkpointer = Checkpointer(workdir / "checkpoints", save_interval_steps=2)
  if checkpointer.latest_step() is not None:
    ckpt = checkpointer.restore(params=params, opt_state=opt_state)
    params, opt_state, rng, start = ckpt.params, ckpt.opt_state, ckpt.rng, ckpt.step
    position = ckpt.data_state["position"]
  writer = MetricWriter(workdir, resume_step=start if start else None, tensorboard=False)
  for step in range(start + 1, last_step + 1):
    x, position = data[position], position + 1
    noise = jax.random.normal(jax.random.fold_in(rng, step), (3,))
    loss, grads = jax.value_and_grad(
        lambda p: jnp.sum((p["w"] - x - 0.1 * noise) ** 2))(params)
    if step == 3:
      loss = jnp.float32(np.nan)  # a non-finite step, skipped
    params, opt_state, metrics = step_fn(params, opt_state, grads, loss)
    stage = "sft" if step <= 3 else "rl"
    writer.write(step, {"loss": loss, **metrics}, stage=stage)
    checkpointer.save(TrainingCheckpoint(step, params, opt_state, stage=stage,
                                         data_state={"position": position}, rng=rng))
  writer.close()
  checkpointer.close()
  return params


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
  full = _train(tmp_path / "full", 6)
  _train(tmp_path / "resumed", 5)  # killed after step 5; the last checkpoint is step 4
  resumed = _train(tmp_path / "resumed", 6)
  np.testing.assert_array_equal(resumed["w"], full["w"])
  records = read_jsonl(tmp_path / "full" / METRICS_FILE)
  assert read_jsonl(tmp_path / "resumed" / METRICS_FILE) == records
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
  assert records[2]["skipped"] == 1 and records[2]["nonfinite"] == {"loss": "nan"}
