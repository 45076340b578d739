"""Qwen2.5-VL against transformers' PyTorch reference (float32, CPU) on a tiny random model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cosmojax import models
from tests import common

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

TOL = 1e-4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  return common.save_tiny_hf_model(common.tiny_qwen2_5_vl_hf_config(),
                                   tmp_path_factory.mktemp("qwen2_5_vl"))


@pytest.fixture(scope="module")
def hf(ckpt):
  return common.load_hf_model(ckpt)


@pytest.fixture(scope="module")
def model(ckpt):
  return models.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def fwd(model):
  """model(...) jitted over its split state (one compile per shape instead of eager op-by-op
  compiles); positions and vision metadata come from the host helpers, as under any jit."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, ids, mask, pixels, positions, meta):
    return nnx.merge(graphdef, state)(ids, mask, pixel_values=pixels, position_ids=positions,
                                      vision_meta=meta)

  def forward(ids, mask=None, pixels=None, grids=None):
    positions = meta = None
    if grids is not None:
      positions, _ = models.get_rope_index(ids, grids, mask, model.config)
      meta = models.vision_metadata(grids, model.config.vision)
    return run(state, ids, mask, pixels, positions, meta)

  return forward


@pytest.fixture(scope="module")
def encode(model):
  """model.encode_images jitted over its split state, metadata from the host helper."""
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda s, p, m: nnx.merge(graphdef, s).encode_images(p, vision_meta=m))
  return lambda pixels, grids, pad_to=None: run(
      state, pixels, models.vision_metadata(grids, model.config.vision, pad_to))


def hf_logits(hf, ids, mask=None, pixels=None, grids=None):
  kw = {"input_ids": torch.tensor(ids)}
  if mask is not None:
    kw["attention_mask"] = torch.tensor(mask)
  if pixels is not None:
    kw.update(pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(np.array(grids)),
              mm_token_type_ids=torch.tensor((ids == common.TINY_IMAGE_TOKEN).astype(np.int64)))
  with torch.no_grad():
    return hf(**kw).logits.numpy()


def assert_close_on(ours, ref, mask=None):
  assert ours.shape == ref.shape
  assert np.abs(ref).max() > 0.1  # logits of a meaningful size: the tolerance means something
  diff = np.abs(np.asarray(ours) - ref)
  if mask is not None:  # padding positions are not defined outputs
    diff = diff * mask[..., None]
  assert diff.max() <= TOL, diff.max()


def test_text_only_matches_transformers(hf, fwd):
  ids = np.random.RandomState(0).randint(0, common.TINY_IMAGE_TOKEN, (2, 11))
  assert_close_on(fwd(ids), hf_logits(hf, ids))


def test_one_image_matches_transformers_eagerly(hf, model):
  # Eager call: positions and vision metadata computed inside from concrete inputs.
  grids = [(1, 4, 6)]
  ids = np.array([common.image_prompt([5, 6, grids[0], 7, 8, 9])])
  pixels = common.random_patches(grids, seed=1)
  ours = model(jnp.asarray(ids), pixel_values=jnp.asarray(pixels), image_grid_thw=grids)
  assert_close_on(ours, hf_logits(hf, ids, pixels=pixels, grids=grids))


def test_several_images_of_different_sizes_match_transformers(hf, fwd):
  # (1, 6, 10): a merged grid of 3x5, not a multiple of the 2x2 windows (partial windows);
  # (1, 2, 2): a single merged token.
  grids = [(1, 4, 6), (1, 6, 10), (1, 2, 2)]
  ids = np.array([common.image_prompt([3, grids[0], 4, 5, grids[1], grids[2], 6])])
  pixels = common.random_patches(grids, seed=2)
  assert_close_on(fwd(ids, None, pixels, grids), hf_logits(hf, ids, pixels=pixels, grids=grids))


def _padded_batch():
  grids = [(1, 4, 6), (1, 6, 4), (1, 4, 4)]
  rows = [common.image_prompt([5, grids[0], 6, grids[1], 7, 8]),
          common.image_prompt([9, grids[2], 10, 11])]
  ids, mask = common.left_pad(rows)
  return ids, mask, grids, common.random_patches(grids, seed=3)


def test_left_padded_batch_matches_transformers(hf, fwd):
  ids, mask, grids, pixels = _padded_batch()
  assert_close_on(fwd(ids, mask, pixels, grids), hf_logits(hf, ids, mask, pixels, grids), mask)
  # Text-only left padding too: default positions count real tokens only. transformers'
  # plain forward would count padding, so the reference gets the positions generate uses.
  ids_t, mask_t = common.left_pad([[1, 2, 3, 4, 5, 6], [7, 8, 9]])
  ref_pos = torch.tensor(np.clip(mask_t.cumsum(-1) - 1, 0, None))
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids_t), attention_mask=torch.tensor(mask_t),
             position_ids=ref_pos).logits.numpy()
  assert_close_on(fwd(ids_t, mask_t), ref, mask_t)


def test_get_rope_index_matches_transformers(hf, model):
  ids, mask, grids, _ = _padded_batch()
  ref_pos, ref_delta = hf.model.get_rope_index(
      torch.tensor(ids), torch.tensor((ids == common.TINY_IMAGE_TOKEN).astype(np.int64)),
      image_grid_thw=torch.tensor(np.array(grids)), attention_mask=torch.tensor(mask))
  pos, delta = models.get_rope_index(ids, grids, mask, model.config)
  np.testing.assert_array_equal(pos, ref_pos.numpy())
  np.testing.assert_array_equal(delta, ref_delta.numpy().reshape(-1, 1))


def test_vision_metadata_matches_transformers_window_index(model):
  from transformers.vision_utils import get_vision_window_index

  grids = np.array([[1, 4, 6], [1, 6, 10], [2, 4, 4]])
  meta = models.vision_metadata(grids, model.config.vision)
  window_index, cu = get_vision_window_index(torch.tensor(grids), 2, 16, 4)
  np.testing.assert_array_equal(np.argsort(meta.merge_unperm), window_index.numpy())
  # Window segment boundaries sit exactly at transformers' cu_window_seqlens.
  starts = np.flatnonzero(np.diff(np.concatenate([[-1], meta.window_segments])))
  np.testing.assert_array_equal(np.append(starts, len(meta.window_segments)), cu.numpy())


def test_encode_images_matches_transformers(hf, encode):
  grids = [(1, 6, 10), (2, 4, 4)]  # the second has two frames: each frame its own segment
  pixels = common.random_patches(grids, seed=4)
  with torch.no_grad():
    ref = hf.model.get_image_features(torch.tensor(pixels), torch.tensor(np.array(grids)))
  ref = torch.cat(ref.pooler_output).numpy()
  assert_close_on(encode(pixels, grids), ref)


def test_padded_vision_metadata_gives_the_same_embeddings(encode):
  grids = [(1, 4, 6), (1, 2, 2)]
  pixels = common.random_patches(grids, seed=5)
  n = pixels.shape[0]
  padded = np.concatenate([pixels, np.ones((12, pixels.shape[1]), np.float32)])
  out = encode(padded, grids, pad_to=n + 12)
  assert out.shape == ((n + 12) // 4, 64)
  np.testing.assert_allclose(out[:n // 4], encode(pixels, grids), atol=1e-5)


def test_image_processor_pixels_match_transformers(hf, fwd):
  from PIL import Image
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
      Qwen2VLImageProcessorPil)

  proc = Qwen2VLImageProcessorPil(patch_size=4, temporal_patch_size=2, merge_size=2,
                                  min_pixels=8 * 8, max_pixels=32 * 32)
  rng = np.random.RandomState(6)
  images = [Image.fromarray(rng.randint(0, 255, (h, w, 3), np.uint8)) for h, w in
            ((20, 28), (12, 12))]
  out = proc(images=images, return_tensors="np")
  pixels, grids = out["pixel_values"].astype(np.float32), out["image_grid_thw"]
  ids = np.array([common.image_prompt([1, tuple(grids[0]), 2, tuple(grids[1]), 3])])
  assert_close_on(fwd(ids, None, pixels, grids),
                  hf_logits(hf, ids, pixels=pixels, grids=[tuple(g) for g in grids]))


def test_cached_decoding_reproduces_full_forward_and_generate(hf, model, fwd):
  """Jitted prefill + lax.scan of decode steps over nnx.split state, left padded, images."""
  ids, mask, grids, pixels = _padded_batch()
  steps = 4
  with torch.no_grad():
    gen = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      pixel_values=torch.tensor(pixels),
                      image_grid_thw=torch.tensor(np.array(grids)),
                      mm_token_type_ids=torch.tensor((ids == common.TINY_IMAGE_TOKEN) * 1),
                      max_new_tokens=steps, do_sample=False, output_logits=True,
                      return_dict_in_generate=True, pad_token_id=0)
  new = gen.sequences[:, ids.shape[1]:].numpy()
  hf_step_logits = np.stack([l.numpy() for l in gen.logits], axis=1)

  graphdef, state = nnx.split(model)
  positions, _ = models.get_rope_index(ids, grids, mask, model.config)
  meta = models.vision_metadata(grids, model.config.vision)

  @jax.jit
  def prefill_and_decode(state, ids, mask, positions, pixels, meta, new):
    m = nnx.merge(graphdef, state)
    embeds = m.encode_images(pixels, vision_meta=meta)
    cache = m.init_cache(ids.shape[0], ids.shape[1] + steps + 2)
    first, cache = m.prefill(ids, cache, mask, positions, image_embeds=embeds)

    def step(cache, token_b):
      logits, cache = m.decode_step(token_b, cache)
      return cache, logits

    cache, rest = jax.lax.scan(step, cache, new.T[:-1])
    return jnp.concatenate([first[:, None], jnp.moveaxis(rest, 0, 1)], axis=1), cache

  cached, cache = prefill_and_decode(state, ids, mask, positions, pixels, meta, new)
  assert int(cache.index) == ids.shape[1] + steps - 1
  np.testing.assert_allclose(cached, hf_step_logits, atol=TOL)
  # The same logits from one full forward over prompt + generated tokens.
  full_ids = np.concatenate([ids, new], axis=1)
  full_mask = np.concatenate([mask, np.ones_like(new)], axis=1)
  full = fwd(full_ids, full_mask, pixels, grids)
  np.testing.assert_allclose(cached, full[:, ids.shape[1] - 1:-1], atol=TOL)
