"""Layers, host-side index helpers and configs against hand-computed cases (no torch)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from cosmojax import models
from cosmojax.models import layers
from cosmojax.parallel import axes


def test_rope_tables_by_hand():
  inv = layers.rope_inv_freq(6, 100.0)
  np.testing.assert_allclose(inv, [1.0, 100 ** (-2 / 6), 100 ** (-4 / 6)], rtol=1e-6)
  # 1-D: angle = position * inv_freq, both halves alike.
  cos, sin = layers.rope_cos_sin(jnp.array([[3]]), inv)
  angles = [3 * f for f in inv] * 2
  np.testing.assert_allclose(cos[0, 0], [math.cos(a) for a in angles], rtol=1e-5)
  np.testing.assert_allclose(sin[0, 0], [math.sin(a) for a in angles], rtol=1e-5)
  # M-RoPE with sections (1, 1, 1): frequency j takes row j's position (t=2, h=5, w=7).
  cos, _ = layers.rope_cos_sin(jnp.array([[[2]], [[5]], [[7]]]), inv, (1, 1, 1))
  angles = [2 * inv[0], 5 * inv[1], 7 * inv[2]] * 2
  np.testing.assert_allclose(cos[0, 0], [math.cos(a) for a in angles], rtol=1e-5)
  # Equal rows: M-RoPE is 1-D RoPE.
  pos = jnp.array([[0, 4, 9]])
  np.testing.assert_allclose(layers.rope_cos_sin(jnp.stack([pos] * 3), inv, (1, 1, 1))[1],
                             layers.rope_cos_sin(pos, inv)[1])


def test_apply_rope_rotates_pairs_by_hand():
  a = 0.7
  x = jnp.array([[[[1.0, 2.0]]]])  # [batch, time, heads, head_dim=2]: one (x1, x2) pair
  cos, sin = jnp.full((1, 1, 2), math.cos(a)), jnp.full((1, 1, 2), math.sin(a))
  out = layers.apply_rope(x, cos, sin)[0, 0, 0]
  np.testing.assert_allclose(out, [math.cos(a) - 2 * math.sin(a), 2 * math.cos(a) + math.sin(a)],
                             rtol=1e-6)


def test_grouped_query_attention_matches_a_loop_reference():
  rng = np.random.RandomState(0)
  b, t, s, n, k, h = 2, 3, 5, 4, 2, 8
  q, kk, v = rng.randn(b, t, n, h), rng.randn(b, s, k, h), rng.randn(b, s, k, h)
  mask = rng.rand(b, t, s) > 0.3
  mask[..., 0] = True
  out = layers.dot_product_attention(*(jnp.asarray(a, jnp.float32) for a in (q, kk, v)),
                                     jnp.asarray(mask), 0.5)
  ref = np.zeros((b, t, n, h))
  for bi in range(b):
    for ti in range(t):
      for ni in range(n):
        kv = ni // (n // k)
        scores = [0.5 * q[bi, ti, ni] @ kk[bi, si, kv] for si in range(s) if mask[bi, ti, si]]
        keys = [si for si in range(s) if mask[bi, ti, si]]
        p = np.exp(np.array(scores) - max(scores))
        p /= p.sum()
        ref[bi, ti, ni] = sum(pi * v[bi, si, kv] for pi, si in zip(p, keys))
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_rms_norm_formula():
  norm = layers.RMSNorm(4, 1e-6)
  norm.weight[...] = jnp.array([1.0, 2.0, 0.5, -1.0])
  x = np.array([[1.0, -2.0, 3.0, 0.5]])
  ref = x / np.sqrt(np.mean(x**2) + 1e-6) * np.array([1.0, 2.0, 0.5, -1.0])
  np.testing.assert_allclose(norm(jnp.asarray(x, jnp.float32)), ref, rtol=1e-6)


@pytest.fixture(scope="module")
def tiny():
  config = models.tiny_qwen2_5_vl_config(vocab_size=128)
  return models.Qwen2_5_VL(config, rngs=nnx.Rngs(0))


def test_parameters_carry_logical_axes_that_map_to_the_mesh(tiny):
  state = nnx.state(tiny, nnx.Param)
  for path, var in nnx.to_flat_state(state):
    assert len(var.out_sharding) == var.get_value().ndim, path
  with nn.logical_axis_rules(axes.DEFAULT_RULES):
    specs = nnx.get_partition_spec(state)
  layer = specs["decoder"]["layers"][0]
  assert layer["attn"]["q"]["kernel"].get_value() == P(axes.FSDP, axes.TENSOR, None)
  assert layer["attn"]["o"]["kernel"].get_value() == P(axes.TENSOR, None, axes.FSDP)
  assert layer["mlp"]["down"]["kernel"].get_value() == P(axes.TENSOR, axes.FSDP)
  assert specs["decoder"]["embed"]["embedding"].get_value() == P(axes.TENSOR, axes.FSDP)
  assert specs["decoder"]["norm"]["weight"].get_value() == P(None)


def test_random_init_gives_a_near_uniform_next_token_distribution(tiny):
  # A sensible init scale: the initial cross-entropy is close to log(vocab).
  grids = [(1, 4, 4)]
  ids = np.array([[1, 2, 3, 126] + [124] * 4 + [127, 4, 5, 6]])
  positions, _ = models.get_rope_index(ids, grids, None, tiny.config)
  meta = models.vision_metadata(grids, tiny.config.vision)
  pixels = np.random.RandomState(0).rand(16, tiny.config.vision.patch_dim).astype(np.float32)
  graphdef, state = nnx.split(tiny)
  logits = jax.jit(lambda s: nnx.merge(graphdef, s)(
      ids, pixel_values=pixels, position_ids=positions, vision_meta=meta))(state)
  assert logits.shape == (1, ids.shape[1], 128)
  loss = -jnp.take_along_axis(jax.nn.log_softmax(logits[0, :-1]), ids[0, 1:, None], 1).mean()
  assert abs(float(loss) - math.log(128)) < 0.5


def test_get_rope_index_by_hand():
  config = models.tiny_qwen2_5_vl_config(vocab_size=128)  # image token 124
  ids = np.array([[0, 0, 1, 2] + [124] * 6 + [3]])
  mask = np.array([[0, 0] + [1] * 9])
  pos, delta = models.get_rope_index(ids, [(1, 4, 6)], mask, config)
  # Image grid 4x6 patches -> 2x3 merged tokens starting at position 2; text resumes at
  # 2 + max(2, 3) = 5. Padding gets 0.
  np.testing.assert_array_equal(pos[0, 0], [0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 5])
  np.testing.assert_array_equal(pos[1, 0], [0, 0, 0, 1, 2, 2, 2, 3, 3, 3, 5])
  np.testing.assert_array_equal(pos[2, 0], [0, 0, 0, 1, 2, 3, 4, 2, 3, 4, 5])
  np.testing.assert_array_equal(delta, [[5 + 1 - 9]])
  with pytest.raises(ValueError, match="needs 6 consecutive image tokens"):
    models.get_rope_index(ids[:, :-3], [(1, 4, 6)], None, config)
  with pytest.raises(ValueError, match="has 2 images but the prompts hold 1"):
    models.get_rope_index(ids, [(1, 4, 6), (1, 2, 2)], mask, config)


def test_vision_metadata_by_hand():
  config = models.tiny_qwen2_5_vl_config().vision  # windows of 2x2 merged units
  meta = models.vision_metadata([(1, 4, 8)], config)
  # 2x4 merged units [[0 1 2 3] [4 5 6 7]] in two 2x2 windows: columns 0-1, then 2-3.
  np.testing.assert_array_equal(meta.merge_unperm, np.argsort([0, 1, 4, 5, 2, 3, 6, 7]))
  np.testing.assert_array_equal(meta.window_segments, [0] * 16 + [1] * 16)
  np.testing.assert_array_equal(meta.full_segments, [0] * 32)
  # Window order starts with merged unit 0 (patches (0,0) (0,1) (1,0) (1,1)), then unit 1.
  np.testing.assert_array_equal(meta.rope_hw[:8], [[0, 0], [0, 1], [1, 0], [1, 1],
                                                   [0, 2], [0, 3], [1, 2], [1, 3]])
  np.testing.assert_array_equal(meta.patch_perm[:8], range(8))
  np.testing.assert_array_equal(meta.patch_perm[8:12], range(16, 20))  # merged unit 4
  with pytest.raises(ValueError, match=r"image_grid_thw\[0\] = \[1, 3, 4\]"):
    models.vision_metadata([(1, 3, 4)], config)


def test_cache_repeat_keeps_samples_of_a_prompt_together():
  cache = models.init_cache(2, 2, 4, 1, 2, jnp.float32)  # 2 layers, batch 2
  cache = cache.replace(next_position=jnp.array([5, 9]))
  rep = cache.repeat(3)
  np.testing.assert_array_equal(rep.next_position, [5, 5, 5, 9, 9, 9])
  assert rep.keys[1].shape == (6, 4, 1, 2) and len(rep.keys) == 2


def test_flat_and_nested_qwen2_5_vl_configs_read_alike():
  nested = models.qwen2_5_vl_config_to_hf(models.tiny_qwen2_5_vl_config())
  text = dict(nested["text_config"])
  rope = text.pop("rope_parameters")
  flat = {**{k: v for k, v in nested.items() if k != "text_config"}, **text,
          "rope_theta": rope["rope_theta"],
          "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]}}
  assert (models.qwen2_5_vl_config_from_hf(flat)
          == models.qwen2_5_vl_config_from_hf(nested) == models.tiny_qwen2_5_vl_config())
  with pytest.raises(models.ConfigError, match="missing field text_config.hidden_size"):
    del text["hidden_size"]
    models.qwen2_5_vl_config_from_hf({**nested, "text_config": text})


def test_images_without_positions_are_refused(tiny):
  ids = jnp.array([[1, 124, 124, 124, 124, 2]])
  embeds = jnp.zeros((4, 64))
  with pytest.raises(ValueError, match="needs position_ids"):
    tiny.prefill(ids, tiny.init_cache(1, 8), image_embeds=embeds)
  with pytest.raises(ValueError, match="needs position_ids"):
    tiny.hidden_states(ids, image_embeds=embeds)


def test_bfloat16_compute_stays_close_to_float32(tiny):
  ids = np.random.RandomState(0).randint(0, 120, (2, 7))
  graphdef, state = nnx.split(tiny)
  f32 = jax.jit(lambda s: nnx.merge(graphdef, s)(ids))(state)
  bf16 = models.Qwen2_5_VL(tiny.config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                           rngs=nnx.Rngs(0))
  graphdef16, state16 = nnx.split(bf16)
  assert state16["decoder"]["embed"]["embedding"].get_value().dtype == jnp.bfloat16
  out = jax.jit(lambda s: nnx.merge(graphdef16, s)(ids))(state16)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, f32, atol=0.05 * float(jnp.abs(f32).max()))


def test_gradients_through_a_left_padded_image_batch_are_finite(tiny):
  grids = [(1, 4, 4)]
  ids = np.array([[0, 0, 1, 126] + [124] * 4 + [127, 4], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
  mask = np.array([[0, 0] + [1] * 8, [1] * 10])
  positions, _ = models.get_rope_index(ids, grids, mask, tiny.config)
  meta = models.vision_metadata(grids, tiny.config.vision)
  pixels = np.random.RandomState(1).rand(16, tiny.config.vision.patch_dim).astype(np.float32)

  def loss_fn(model):
    h = model.hidden_states(ids, mask, pixels, position_ids=positions, vision_meta=meta)
    logp = jax.nn.log_softmax(h[:, :-1] @ model.lm_head_matrix())
    ll = jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    return -(ll * mask[:, 1:]).sum() / mask[:, 1:].sum()

  grads = nnx.jit(nnx.grad(loss_fn))(tiny)
  flat = dict(nnx.to_flat_state(grads))
  assert all(bool(jnp.isfinite(v.get_value()).all()) for v in flat.values())
  # The image reaches the loss: the vision tower gets gradient.
  assert float(jnp.abs(flat[("visual", "patch_embed", "kernel")].get_value()).max()) > 0
