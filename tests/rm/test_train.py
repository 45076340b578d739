"""Reward-model training: the pure step, and learning a preference rule that generalizes."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from cosmojax import rm
from cosmojax.data import BatchSpec
from tests import common


@pytest.fixture(scope="module")
def tok():
  return common.preference_tokenizer()


def _pair_batch(tok, pairs, batch_size=8):
  encoder = rm.SequenceEncoder(tok, 48)
  chosen = [ids for ids, _ in encoder.sequences([p.prompt for p in pairs],
                                                [p.chosen for p in pairs])]
  rejected = [ids for ids, _ in encoder.sequences([p.prompt for p in pairs],
                                                  [p.rejected for p in pairs])]
  return rm.collate_pairs(chosen, rejected, [p.margin for p in pairs],
                          BatchSpec(batch_size, (48,)), encoder.pad_id)


def test_train_step_loss_metrics_frozen_head_and_progress(tok):
  model = common.tiny_reward_model(256, seed=5)
  pairs = common.preference_pairs("train")[:6]
  batch = _pair_batch(tok, pairs)
  # Independent loss: score each side alone, unpadded order, numpy Bradley-Terry.
  scorer = rm.RewardScorer(model, tok)
  kw = dict(batch_size=8, length_buckets=(48,))
  r_c = scorer([p.prompt for p in pairs], [p.chosen for p in pairs], **kw)
  r_r = scorer([p.prompt for p in pairs], [p.rejected for p in pairs], **kw)
  want_loss = np.mean(np.log1p(np.exp(-(r_c - r_r))))

  config = rm.RMTrainConfig(learning_rate=1e-2, batch_size=8, length_buckets=(48,))
  tx = rm.make_optimizer(config)
  graphdef, state = rm.init_train_state(model, tx, config.frozen)
  lm_head_before = np.asarray(model.backbone.lm_head.kernel[...])
  embed_before = np.asarray(model.backbone.decoder.embed.embedding[...])
  step = rm.make_train_step(graphdef, tx, rm.learning_rate_schedule(config))
  state, metrics = step(state, batch, jax.random.key(0))
  assert set(metrics) == {"loss", "accuracy", "margin", "chosen", "rejected", "grad_norm",
                          "learning_rate"}
  assert float(metrics["loss"]) == pytest.approx(want_loss, rel=1e-4)
  assert float(metrics["accuracy"]) == pytest.approx(np.mean(r_c > r_r))
  assert float(metrics["margin"]) == pytest.approx(np.mean(r_c - r_r), abs=1e-5)
  assert float(metrics["learning_rate"]) == pytest.approx(1e-2)
  assert int(state.step) == 1
  for _ in range(3):
    state, later = step(state, batch, jax.random.key(0))
  assert float(later["loss"]) < float(metrics["loss"])
  trained = nnx.merge(graphdef, state.params, state.rest)
  np.testing.assert_array_equal(trained.backbone.lm_head.kernel[...], lm_head_before)
  assert not np.array_equal(trained.backbone.decoder.embed.embedding[...], embed_before)


def test_learns_preference_rule_and_generalizes_to_held_out_pairs(tok):
  """The brief's bar: >= 90% pairwise accuracy on held-out (verb, object) requests and
  (refusal, answer) pairings, in a few hundred steps at most."""
  test_pairs = common.preference_pairs("test")
  kw = dict(batch_size=32, length_buckets=(48,))
  untrained = rm.pairwise_accuracy(rm.RewardScorer(common.tiny_reward_model(256), tok),
                                   test_pairs, **kw)
  model, history, seconds = common.trained_preference_model()
  held_out = rm.pairwise_accuracy(rm.RewardScorer(model, tok), test_pairs, **kw)
  print(f"held-out pairwise accuracy {held_out['accuracy']:.3f} (untrained "
        f"{untrained['accuracy']:.3f}), margin {held_out['margin']:.2f}, "
        f"{len(history)} steps in {seconds:.1f} s")
  assert untrained["accuracy"] < 0.75
  assert held_out["accuracy"] >= 0.9
  assert history[-1]["loss"] < 0.1 < history[0]["loss"]


def test_pointwise_and_value_training_reduce_their_losses(tok):
  # Refusals to benign requests are bad (0), answers good (1): a lexical rule.
  data = [rm.LabeledResponse(f"How do I {verb} the {obj}?", text, label)
          for verb in common.PREF_BENIGN_VERBS for obj in common.PREF_OBJECTS[:2]
          for texts, label in ((common.PREF_REFUSALS, 0.0), (common.PREF_ANSWERS, 1.0))
          for text in texts]
  config = rm.RMTrainConfig(steps=15, batch_size=16, length_buckets=(48,), learning_rate=3e-3)
  for value in (False, True):
    model = common.tiny_reward_model(256, seed=7, value=value)
    trained, history = rm.train_reward_model(model, tok, data, config)
    assert set(history[0]) >= {"loss", "accuracy", "reward", "grad_norm"}
    assert history[-1]["loss"] < 0.5 * history[0]["loss"], (value, history[-1])
  # The value loss reads every response token: check it on the trained value model.
  encoder = rm.SequenceEncoder(tok, 48)
  rows = encoder.sequences([d.prompt for d in data[:4]], [d.response for d in data[:4]])
  batch = rm.collate_pointwise(rows, [d.label for d in data[:4]], BatchSpec(4, (48,)), 0)
  graphdef, state = nnx.split(trained)
  loss, values = jax.jit(lambda s: (rm.rm_loss(nnx.merge(graphdef, s), batch)[0],
                                    nnx.merge(graphdef, s)(batch.input_ids,
                                                           batch.attention_mask)))(state)
  values = np.asarray(values)
  y = np.broadcast_to(batch.labels[:, None], values.shape)
  per_token = np.log1p(np.exp(values)) - y * values
  want = per_token[batch.response_mask > 0].mean()
  assert float(loss) == pytest.approx(want, rel=1e-5)


def test_mixed_or_empty_training_data_is_an_error(tok):
  model = common.tiny_reward_model(256)
  pair = common.preference_pairs("train")[0]
  with pytest.raises(TypeError, match="all PreferencePair or all LabeledResponse"):
    rm.train_reward_model(model, tok, [pair, rm.LabeledResponse("a", "b", 1.0)])
  with pytest.raises(ValueError, match="no training data"):
    rm.train_reward_model(model, tok, [])
  with pytest.raises(ValueError, match="leaves no parameter to train"):
    rm.init_train_state(model, rm.make_optimizer(rm.RMTrainConfig()),
                        frozen=("backbone", "head"))


def test_sharded_step_matches_single_device(tok):
  """STYLE item 11: the step on a (data 2, fsdp 2, tensor 2) mesh of fake CPU devices gives
  the single-device result. Plain SGD, so that equal gradients mean equal parameters (Adam's
  g / sqrt(v) magnifies float noise of near-zero gradients)."""
  import optax  # pylint: disable=g-import-not-at-top

  from cosmojax.parallel import make_mesh, shard_batch  # pylint: disable=g-import-not-at-top

  batch = _pair_batch(tok, common.preference_pairs("train")[::48])
  tx = optax.sgd(0.5)
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  results = []
  for m in (None, mesh):
    graphdef, state = rm.init_train_state(common.tiny_reward_model(256), tx, mesh=m)
    step = rm.make_train_step(graphdef, tx)
    placed = batch if m is None else shard_batch(batch, m)
    history = []
    for i in range(2):
      state, metrics = step(state, placed, jax.random.key(i))
      history.append(jax.device_get(metrics))
    results.append((nnx.merge(graphdef, state.params, state.rest), history))
  (single, single_history), (sharded, sharded_history) = results
  kernel = sharded.backbone.decoder.layers[0].mlp.gate.kernel[...]
  assert len(kernel.sharding.device_set) == 8  # really spread over the mesh
  for a, b in zip(single_history, sharded_history):
    for name in ("loss", "grad_norm", "margin"):
      assert float(a[name]) == pytest.approx(float(b[name]), rel=1e-5, abs=1e-6), name
  want = dict(nnx.to_flat_state(nnx.state(single, nnx.Param)))
  for key, value in nnx.to_flat_state(nnx.state(sharded, nnx.Param)):
    np.testing.assert_allclose(np.asarray(value.get_value()),
                               np.asarray(want[key].get_value()), atol=1e-6, err_msg=str(key))
