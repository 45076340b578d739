"""The JAX rollout engine on a tiny random Qwen2.5-VL, against full forward passes (no cache).

One module-scoped engine serves most tests, so that a handful of shapes compile once each:
prompt batches of 4 rows padded to TP tokens, TN completion slots, 64 image patches.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from cosmojax import models, parallel, rollout
from tests import common

TP, TN, G = 24, 8, 2
PROMPTS = common.ROLLOUT_PROMPTS
IMAGE = common.TINY_IMAGE_TOKEN
GREEDY = rollout.SamplingConfig(max_new_tokens=TN, greedy=True)
SAMPLED = rollout.SamplingConfig(group_size=G, max_new_tokens=TN, temperature=1.0)


@pytest.fixture(scope="module")
def model():
  return common.tiny_rollout_model()


@pytest.fixture(scope="module")
def engine(model):
  return rollout.JaxRolloutEngine(model, pad_id=0, prompt_buckets=(TP,), completion_buckets=(TN,))


@pytest.fixture(scope="module")
def batch_and_patches():
  return common.rollout_prompt_batch()


@pytest.fixture(scope="module")
def batch(batch_and_patches):
  return batch_and_patches[0]


@pytest.fixture(scope="module")
def greedy(engine, batch):
  return engine.generate(batch, jax.random.key(0), GREEDY)


@pytest.fixture(scope="module")
def sampled(engine, batch):
  return engine.generate(batch, jax.random.key(1), SAMPLED)


@pytest.fixture(scope="module")
def forward(model):
  """Full-forward logits [B, T, V] (no cache), positions from get_rope_index on the host."""
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda s, ids, mask, pixels, positions, meta: nnx.merge(graphdef, s)(
      ids, mask, pixel_values=pixels, position_ids=positions, vision_meta=meta))

  def fwd(ids, mask, pixels, grids):
    positions, _ = models.get_rope_index(ids, grids, mask, model.config)
    meta = models.vision_metadata(grids, model.config.vision)
    return np.asarray(run(state, ids, mask, pixels, positions, meta))

  return fwd


def _grids(prompts):
  return [g for _, gs in prompts for g in gs]


def _left_pad_to(x, t):
  return np.pad(np.asarray(x), ((0, 0), (t - x.shape[1], 0)))


def _log_softmax(logits):
  """log_softmax over the vocabulary without the image placeholder (the engine never
  samples it), float64."""
  z = np.array(logits, np.float64)
  z[..., IMAGE] = -np.inf
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _take(logp, tokens):
  return np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0]


def test_greedy_equals_stepwise_argmax_of_the_full_forward(greedy, batch, forward, model):
  ids, mask = _left_pad_to(batch.input_ids, TP), _left_pad_to(batch.attention_mask, TP)
  b, grids = ids.shape[0], _grids(PROMPTS)
  seq = np.concatenate([ids, np.zeros((b, TN), ids.dtype)], axis=1)
  seq_mask = np.concatenate([mask, np.zeros((b, TN), mask.dtype)], axis=1)
  logps = []
  for t in range(TN):  # one token at a time; later (masked) slots do not affect slot TP - 1 + t
    logp = _log_softmax(forward(seq, seq_mask, batch.pixel_values, grids)[:, TP - 1 + t])
    seq[:, TP + t] = logp.argmax(-1)
    seq_mask[:, TP + t] = 1
    logps.append(_take(logp, seq[:, TP + t]))
  np.testing.assert_array_equal(greedy.tokens, seq)
  np.testing.assert_allclose(greedy.logprobs, np.stack(logps, 1), atol=1e-4)
  np.testing.assert_array_equal(greedy.attention_mask, seq_mask)
  # Positions of generated tokens continue the prompt's M-RoPE positions.
  positions, _ = models.get_rope_index(seq, grids, seq_mask, model.config)
  np.testing.assert_array_equal(greedy.position_ids, positions)
  np.testing.assert_array_equal(greedy.lengths, [TN] * b)
  assert np.asarray(greedy.truncated).all() and np.asarray(greedy.completion_mask).all()


def test_behaviour_logprobs_equal_a_full_forward_on_the_samples(sampled, batch_and_patches,
                                                                forward, engine):
  batch, patches = batch_and_patches
  n = len(PROMPTS) * G
  # Independent reference: every sample carries its prompt's images (the tower runs per sample).
  tokens, mask = np.asarray(sampled.tokens), np.asarray(sampled.attention_mask)
  pixels = np.concatenate([patches[i // G] for i in range(n)])
  grids = [g for i in range(n) for g in PROMPTS[i // G][1]]
  logits = forward(tokens, mask, pixels, grids)[:, TP - 1:-1]
  completion = np.asarray(sampled.completion_mask)
  ref = _take(_log_softmax(logits), tokens[:, TP:]) * completion
  np.testing.assert_allclose(sampled.logprobs, ref, atol=1e-4)
  np.testing.assert_allclose(engine.logprobs(sampled), ref, atol=1e-4)
  cold = _take(_log_softmax(logits / 0.7), tokens[:, TP:]) * completion
  np.testing.assert_allclose(engine.logprobs(sampled, temperature=0.7), cold, atol=1e-4)
  # Samples of prompt b are rows b*G .. b*G+G-1 and start with its (left-padded) tokens.
  np.testing.assert_array_equal(sampled.prompt_index, np.arange(n) // G)
  np.testing.assert_array_equal(sampled.group_ids, np.arange(n) // G)
  np.testing.assert_array_equal(sampled.sample_index, np.arange(n) % G)
  np.testing.assert_array_equal(tokens[:, :TP], np.repeat(_left_pad_to(batch.input_ids, TP), G, 0))
  np.testing.assert_array_equal(sampled.task_ids, np.repeat(batch.task_ids, G))
  assert sampled.prompt_length == TP and sampled.group_size == G
  assert (tokens[0::G, TP:] != tokens[1::G, TP:]).any(axis=1).all()  # a group's samples differ
  assert IMAGE not in tokens[:, TP:]


def test_same_key_same_rollout_and_other_keys_other_samples(engine, batch, sampled):
  again = engine.generate(batch, jax.random.key(1), SAMPLED)
  np.testing.assert_array_equal(again.tokens, sampled.tokens)
  np.testing.assert_array_equal(again.logprobs, sampled.logprobs)
  other = engine.generate(batch, jax.random.key(2), SAMPLED)
  assert (np.asarray(other.tokens) != np.asarray(sampled.tokens)).any(axis=1).all()


def test_each_prompt_alone_gives_the_batch_completions(engine, greedy):
  for i, prompt in enumerate(PROMPTS):
    # Same patch/image-slot shapes as the batch: one compilation for every single prompt.
    alone, _ = common.rollout_prompt_batch((prompt,), num_patches=64, num_images=3, seed=i)
    out = engine.generate(alone, jax.random.key(5), GREEDY)
    np.testing.assert_array_equal(out.tokens[0], greedy.tokens[i])
    np.testing.assert_allclose(out.logprobs[0], greedy.logprobs[i], atol=1e-4)
    np.testing.assert_array_equal(out.position_ids[:, 0], greedy.position_ids[:, i])


def test_padding_prompts_are_not_generated(engine, batch, greedy):
  padded = batch.replace(example_mask=np.array([True, True, True, False]),
                         task_ids=np.array([0, 1, 2, -1], np.int32))
  out = engine.generate(padded, jax.random.key(0), GREEDY)
  np.testing.assert_array_equal(out.tokens[:3], greedy.tokens[:3])
  np.testing.assert_array_equal(out.sample_mask, [True, True, True, False])
  np.testing.assert_array_equal(out.lengths, [TN, TN, TN, 0])
  np.testing.assert_array_equal(out.truncated, [True, True, True, False])
  np.testing.assert_array_equal(out.tokens[3, TP:], 0)
  np.testing.assert_array_equal(out.logprobs[3], 0.0)
  assert int(out.task_ids[3]) == -1


def _expected_ends(free, eos_ids, stop):
  """(length, stopped) per row of free-running greedy tokens [B, TN]."""
  ends = []
  for row in free.tolist():
    end = next((t + 1 for t in range(len(row))
                if row[t] in eos_ids or tuple(row[max(0, t + 1 - len(stop)):t + 1]) == stop),
               None)
    ends.append((end, True) if end else (len(row), False))
  return ends


def test_eos_ids_and_stop_sequences_end_samples_and_max_new_tokens_truncates(
    engine, batch, greedy, caplog):
  free = np.asarray(greedy.tokens)[:, TP:]
  eos_ids = (int(free[0, 2]), int(free[3, 5]))  # two EOS ids
  stop = tuple(int(x) for x in free[1, 3:5])  # a two-token stop sequence
  config = rollout.SamplingConfig(max_new_tokens=TN, greedy=True, eos_ids=eos_ids,
                                  stop_sequences=(stop,))
  before = engine.compilations["generate"]
  with caplog.at_level(logging.INFO, logger="cosmojax.rollout.engine"):
    out = engine.generate(batch, jax.random.key(0), config)
  assert "compiling generate" in caplog.text
  for max_new, result in ((TN, out),
                          (3, engine.generate(batch, jax.random.key(0),
                                              dataclasses.replace(config, max_new_tokens=3)))):
    ends = _expected_ends(free[:, :max_new], eos_ids, stop)
    assert {s for _, s in ends} == {True, False}  # both outcomes are exercised
    lengths = np.array([e for e, _ in ends])
    np.testing.assert_array_equal(result.lengths, lengths)
    np.testing.assert_array_equal(result.truncated, [not s for _, s in ends])
    keep = np.arange(TN)[None] < lengths[:, None]
    np.testing.assert_array_equal(result.completion_mask, keep)
    np.testing.assert_array_equal(result.tokens[:, TP:], np.where(keep, free, 0))
    np.testing.assert_allclose(result.logprobs, np.where(keep, greedy.logprobs, 0), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(result.attention_mask)[:, TP:], keep)
  # Row 1 ends with the stop sequence, not an EOS; one new compilation for both calls
  # (max_new_tokens is traced), and the jit cache agrees with the engine's count.
  assert _expected_ends(free[1:2], eos_ids, stop)[0][0] <= 5
  assert engine.compilations["generate"] == before + 1
  assert engine._generate._cache_size() == engine.compilations["generate"]


def test_top_k_one_is_greedy_with_logprob_zero(engine, batch, greedy):
  out = engine.generate(batch, jax.random.key(9),
                        rollout.SamplingConfig(max_new_tokens=TN, temperature=0.5, top_k=1))
  np.testing.assert_array_equal(out.tokens, greedy.tokens)
  np.testing.assert_allclose(out.logprobs, 0.0, atol=1e-6)


def _equations(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in its equations (loops, calls)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if isinstance(sub, jax.extend.core.Jaxpr):
          yield from _equations(sub)


def test_vision_tower_and_prefill_run_once_per_prompt_not_per_sample(engine, batch, sampled,
                                                                     monkeypatch):
  calls = []
  for name in ("encode_images", "prefill"):
    original = getattr(models.Qwen2_5_VL, name)

    def spy(self, x, *args, _name=name, _original=original, **kwargs):
      calls.append((_name, x.shape))
      return _original(self, x, *args, **kwargs)

    monkeypatch.setattr(models.Qwen2_5_VL, name, spy)
  prompts = engine.prepare_prompts(batch)
  spec = rollout.DecodeSpec(group_size=3, num_new=TN, greedy=False, top_k=0, use_top_p=False,
                            eos_ids=(), stop_sequences=(), pad_id=0, suppressed_ids=(IMAGE,))
  generate = lambda state, p, key: rollout.generate_rollout(
      nnx.merge(engine.graphdef, state), p, key, 1.0, 1.0, TN, spec)
  jaxpr = jax.make_jaxpr(generate)(engine.state, prompts, jax.random.key(0))
  assert calls == [("encode_images", (64, common.TINY_PATCH_DIM)), ("prefill", (4, TP))]
  # In the traced program the patch embedding (the one contraction over the patch
  # features) runs once, on the batch's 64 patches.
  patch_dots = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"
                and e.invars[0].aval.shape[-1] == common.TINY_PATCH_DIM]
  assert [e.invars[0].aval.shape for e in patch_dots] == [(64, common.TINY_PATCH_DIM)]
  # Scoring a rollout of G samples per prompt also encodes the prompts' images once.
  calls.clear()
  score = lambda state, r: rollout.score_rollout(nnx.merge(engine.graphdef, state), r, 1.0)
  jax.make_jaxpr(score)(engine.state, sampled)
  assert calls == [("encode_images", (64, common.TINY_PATCH_DIM))]


def test_sharded_generation_over_eight_devices_matches_one_device(model, batch, greedy,
                                                                 sampled):
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  engine = rollout.JaxRolloutEngine(model, pad_id=0, mesh=mesh, prompt_buckets=(TP,),
                                    completion_buckets=(TN,))
  out = engine.generate(batch, jax.random.key(0), GREEDY)
  np.testing.assert_array_equal(out.tokens, greedy.tokens)
  np.testing.assert_allclose(out.logprobs, greedy.logprobs, atol=1e-4)
  np.testing.assert_array_equal(out.position_ids, greedy.position_ids)
  # Sampling too: the random draws do not depend on how the samples are sharded.
  out_sampled = engine.generate(batch, jax.random.key(1), SAMPLED)
  np.testing.assert_array_equal(out_sampled.tokens, sampled.tokens)
  np.testing.assert_allclose(out_sampled.logprobs, sampled.logprobs, atol=1e-4)
  rows = NamedSharding(mesh, parallel.batch_spec(2))
  assert out.tokens.sharding.is_equivalent_to(rows, 2)
  assert len(out.tokens.addressable_shards) == 8
  sharded = [x for x in jax.tree.leaves(engine.state)
             if not x.sharding.is_fully_replicated]
  assert sharded  # parameters follow their logical axes (fsdp / tensor)
  with pytest.raises(ValueError, match="multiple of the data-parallel size"):
    engine.generate(common.rollout_prompt_batch(PROMPTS[:2])[0], jax.random.key(0), GREEDY)


def test_text_only_model_samples_and_scores():
  lm = common.tiny_rollout_model(text_only=True)
  engine = rollout.JaxRolloutEngine(lm, pad_id=0, completion_buckets=(TN,))
  assert engine.suppressed_ids == ()
  batch, _ = common.rollout_prompt_batch((PROMPTS[0], PROMPTS[3]))
  out = engine.generate(batch, jax.random.key(0), SAMPLED)
  graphdef, state = nnx.split(lm)
  logits = jax.jit(lambda s, ids, mask: nnx.merge(graphdef, s)(ids, mask))(
      state, out.tokens, out.attention_mask)
  tp = out.prompt_length
  z = np.asarray(logits, np.float64)[:, tp - 1:-1]
  z = z - z.max(-1, keepdims=True)
  ref = _take(z - np.log(np.exp(z).sum(-1, keepdims=True)), np.asarray(out.tokens)[:, tp:])
  np.testing.assert_allclose(out.logprobs, ref, atol=1e-4)
  np.testing.assert_allclose(engine.logprobs(out), ref, atol=1e-4)


def test_bad_inputs_are_named(engine, model, batch):
  bad = batch.replace(attention_mask=np.asarray(batch.attention_mask)[:, ::-1])
  with pytest.raises(ValueError, match="not left-padded"):
    engine.prepare_prompts(bad)
  with pytest.raises(ValueError, match="image tokens"):
    engine.prepare_prompts(batch.replace(image_grid_thw=np.zeros((3, 3), np.int32)))
  with pytest.raises(ValueError, match="exceeds the largest bucket"):
    engine.generate(batch, jax.random.key(0), rollout.SamplingConfig(max_new_tokens=TN + 1))
  with pytest.raises(ValueError, match="temperature"):
    rollout.SamplingConfig(temperature=0.0)
  with pytest.raises(ValueError, match="structure"):
    engine.update_params({"w": jnp.zeros(3)})


def test_update_params_changes_the_policy_without_recompiling(engine, model, batch, greedy):
  before = engine.num_compilations
  try:
    engine.update_params(jax.tree.map(lambda x: x * 1.5, nnx.split(model)[1]))
    out = engine.generate(batch, jax.random.key(0), GREEDY)
  finally:
    engine.update_params(nnx.split(model)[1])
  back = engine.generate(batch, jax.random.key(0), GREEDY)
  assert (np.asarray(out.tokens) != np.asarray(greedy.tokens)).any()
  np.testing.assert_array_equal(back.tokens, greedy.tokens)
  assert engine.num_compilations == before
