"""Reward / value heads: pooling under left and right padding, per-token values, checkpoints."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from cosmojax import models
from cosmojax.models import heads
from tests import common

ROWS = [[5, 9, 13, 2], [40, 41, 42, 43, 44, 45, 2], [7, 2]]


def _pad(rows, length, left):
  ids = np.zeros((len(rows), length), np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    span = slice(length - len(row), length) if left else slice(0, len(row))
    ids[i, span], mask[i, span] = row, 1
  return ids, mask


@pytest.fixture(scope="module")
def reward_model():
  return common.tiny_reward_model(64, seed=3)


def _jit(model, method):
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, ids, mask: getattr(nnx.merge(graphdef, s), method)(ids, mask)), state


def _reference_hidden(backbone, rows):
  """Hidden states [row, token] of each row's real tokens, from a right-padded forward (the
  causal mask keeps padding out of real tokens), read on the host."""
  hidden, state = _jit(backbone, "hidden_states")
  ids, mask = _pad(rows, 8, left=False)
  h = np.asarray(hidden(state, ids, mask))
  return [h[i, :len(row)] for i, row in enumerate(rows)]


def _head(model):
  return (np.asarray(model.head.kernel[...])[:, 0], float(np.asarray(model.head.bias[...])[0]))


def test_last_token_index_left_right_and_empty_rows():
  mask = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]])
  np.testing.assert_array_equal(models.last_token_index(mask), [1, 3, 3, 0])


def test_score_is_head_at_last_real_token_under_both_paddings(reward_model):
  score, state = _jit(reward_model, "score")
  right = np.asarray(score(state, *_pad(ROWS, 8, left=False)))
  left = np.asarray(score(state, *_pad(ROWS, 8, left=True)))
  # Reference: the hidden state of each row's final token through w, b.
  w, b = _head(reward_model)
  for i, h in enumerate(_reference_hidden(reward_model.backbone, ROWS)):
    np.testing.assert_allclose(right[i], h[-1] @ w + b, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(left, right, atol=1e-5, rtol=1e-5)
  assert np.ptp(right) > 1e-3  # the rows' scores differ: pooling the wrong token would show


def test_value_model_gives_per_token_values_zero_on_padding():
  value_model = common.tiny_reward_model(64, seed=3, value=True)
  values, state = _jit(value_model, "__call__")
  ids, mask = _pad(ROWS, 8, left=True)
  v = np.asarray(values(state, ids, mask))
  assert v.shape == ids.shape
  np.testing.assert_array_equal(v[mask == 0], 0.0)
  w, b = _head(value_model)
  for i, h in enumerate(_reference_hidden(value_model.backbone, ROWS)):
    np.testing.assert_allclose(v[i, 8 - len(h):], h @ w + b, atol=1e-5, rtol=1e-5)
  score, _ = _jit(value_model, "score")
  np.testing.assert_allclose(score(state, ids, mask), v[:, -1], atol=1e-6)


def test_save_load_round_trip_exact(tmp_path, reward_model):
  for model in (reward_model, common.tiny_reward_model(64, seed=4, value=True)):
    path = str(tmp_path / model.kind)
    models.save_reward_model(model, path)
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", heads.HEAD_FILE]
    loaded = models.load_reward_model(path)
    assert type(loaded) is type(model)
    before = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    after = dict(nnx.to_flat_state(nnx.state(loaded, nnx.Param)))
    assert before.keys() == after.keys()
    for key in before:
      np.testing.assert_array_equal(np.asarray(after[key].get_value()),
                                    np.asarray(before[key].get_value()), err_msg=str(key))
    score, state = _jit(model, "score")  # the loaded state under the original's graph
    ids, mask = _pad(ROWS, 8, left=False)
    np.testing.assert_array_equal(np.asarray(score(nnx.split(loaded)[1], ids, mask)),
                                  np.asarray(score(state, ids, mask)))


def test_head_file_layout(tmp_path, reward_model):
  models.save_reward_model(reward_model, str(tmp_path))
  tensors = load_file(str(tmp_path / heads.HEAD_FILE))
  assert sorted(tensors) == ["score.bias", "score.weight"]
  np.testing.assert_array_equal(tensors["score.weight"],
                                np.asarray(reward_model.head.kernel[...]).T)
  assert tensors["score.weight"].shape == (1, 64) and tensors["score.bias"].shape == (1,)


def test_corrupt_or_mismatched_head_file_errors_name_the_file(tmp_path, reward_model):
  path = str(tmp_path)
  models.save_reward_model(reward_model, path)
  file = os.path.join(path, heads.HEAD_FILE)
  good = open(file, "rb").read()

  with open(file, "wb") as f:
    f.write(good[:len(good) // 2])  # truncated
  with pytest.raises(models.CheckpointError, match=f"{file}: cannot read safetensors"):
    models.load_reward_model(path)

  save_file({"score.weight": np.zeros((1, 32), np.float32),
             "score.bias": np.zeros(1, np.float32)}, file, metadata={"kind": "reward"})
  with pytest.raises(models.CheckpointError, match=f"{file}: .*hidden size 64"):
    models.load_reward_model(path)

  save_file({"score.weight": np.zeros((1, 64), np.float32),
             "score.bias": np.zeros(1, np.float32)}, file, metadata={"kind": "critic"})
  with pytest.raises(models.CheckpointError, match=f"{file}: metadata 'kind' is 'critic'"):
    models.load_reward_model(path)

  save_file({"score.weight": np.zeros((1, 64), np.float32)}, file, metadata={"kind": "reward"})
  with pytest.raises(models.CheckpointError, match=f"{file}: expected tensors"):
    models.load_reward_model(path)

  os.remove(file)
  with pytest.raises(models.CheckpointError, match=f"{file}: file not found"):
    models.load_reward_model(path)


def test_vision_language_backbone_scores_text_and_round_trips(tmp_path):
  backbone = models.Qwen2_5_VL(models.tiny_qwen2_5_vl_config(vocab_size=64), rngs=nnx.Rngs(0))
  model = models.RewardModel(backbone, rngs=nnx.Rngs(1))
  score, state = _jit(model, "score")
  ids, mask = _pad(ROWS, 8, left=True)
  got = np.asarray(score(state, ids, mask))
  w, b = _head(model)
  want = [h[-1] @ w + b for h in _reference_hidden(backbone, ROWS)]
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  models.save_reward_model(model, str(tmp_path))
  loaded = models.load_reward_model(str(tmp_path))
  assert isinstance(loaded.backbone, models.Qwen2_5_VL)
  np.testing.assert_array_equal(np.asarray(score(nnx.split(loaded)[1], ids, mask)), got)
