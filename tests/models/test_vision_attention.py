"""Banded segment attention of the vision tower equals dense masked attention."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cosmojax import models
from cosmojax.models import vision


def _segments(rng, lengths, padding):
  ids = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)] + [np.full(padding, -1)])
  return jnp.asarray(ids, jnp.int32)


@pytest.mark.parametrize("seed, max_len, padding", [(0, 20, 40), (1, 36, 0), (2, 9, 130),
                                                      (3, 70, 30)])
def test_banded_equals_dense_values_and_gradients(seed, max_len, padding):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, max_len + 1, size=24).tolist()
  lengths[3] = max_len  # the longest segment is exactly max_len
  seg = _segments(rng, lengths, padding)
  p = seg.shape[0]
  q, k, v = (jnp.asarray(rng.normal(size=(p, 2, 8)), jnp.float32) for _ in range(3))
  band = vision._band(max_len)  # pylint: disable=protected-access
  assert p > 3 * max(vision._QUERY_BLOCK, band)  # the banded path  # pylint: disable=protected-access
  real = np.asarray(seg) >= 0

  def attend(band):
    return lambda q, k, v: vision.segment_attention(q, k, v, seg, band, 0.3)

  banded, dense = attend(band)(q, k, v), attend(None)(q, k, v)
  np.testing.assert_allclose(banded[real], dense[real], rtol=1e-5, atol=1e-6)
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.where(real[:, None, None], f(q, k, v), 0) ** 2)
  for g_banded, g_dense in zip(jax.grad(loss(attend(band)), (0, 1, 2))(q, k, v),
                               jax.grad(loss(attend(None)), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(g_banded, g_dense, rtol=1e-4, atol=1e-6)


def test_tower_with_bands_equals_dense_tower():
  config = models.tiny_qwen2_5_vl_config(vision_hidden=16, patch_size=4)
  tower = models.Qwen2_5_VL(config, rngs=nnx.Rngs(0))
  grid = np.array([[1, 8, 8], [1, 4, 12], [1, 16, 4], [1, 8, 8], [1, 4, 4]] * 2)
  patches = int(grid.prod(axis=1).sum())
  meta = models.vision_metadata(grid, config.vision, pad_to=patches + 64)
  assert meta.full_band == 64 and meta.window_band == 16
  pixels = jnp.asarray(np.random.default_rng(0).normal(size=(patches + 64,
                                                              config.vision.patch_dim)))
  encode = jax.jit(lambda m, x, meta: m.encode_images(x, vision_meta=meta))
  banded = encode(tower, pixels, meta)
  dense = encode(tower, pixels, dataclasses.replace(meta, window_band=None, full_band=None))
  n = models.num_image_tokens(grid, config.vision)
  np.testing.assert_allclose(banded[:n], dense[:n], rtol=1e-5, atol=1e-5)
