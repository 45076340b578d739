"""Parity of the host image processor with transformers' Qwen2VLImageProcessorPil."""

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from cosmojax.data import image_processing
from tests import common

SMALL = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)


def _reference(images, **kwargs):
  out = Qwen2VLImageProcessorPil(**kwargs)(images=images, return_tensors="np")
  return out["pixel_values"], out["image_grid_thw"]


@pytest.mark.parametrize(
    "height,width,kwargs",
    [
        (224, 224, {}),  # square, already a multiple of 28
        (30, 40, {}),  # below min_pixels (56*56): scaled up
        (20, 1000, {}),  # extreme aspect ratio 1:50, wide
        (1000, 28, {}),  # extreme aspect ratio ~36:1, tall
        (333, 517, SMALL),  # odd sizes, custom bounds, scaled down to max_pixels
        (11, 13, SMALL),  # tiny image far below min_pixels
        (900, 700, {}),  # large, rounding without the max_pixels branch
    ],
)
def test_matches_transformers(height, width, kwargs):
  image = common.tiny_image(height, width, seed=height * width)
  ref_pixels, ref_grid = _reference([image], **kwargs)
  ours = image_processing.ImageProcessor(**kwargs)([image])
  np.testing.assert_array_equal(ours.image_grid_thw, ref_grid)
  assert ours.pixel_values.shape == ref_pixels.shape
  assert ours.pixel_values.dtype == np.float32
  np.testing.assert_allclose(ours.pixel_values, ref_pixels, atol=1e-5, rtol=0)


def test_matches_transformers_on_pil_modes_and_lists():
  base = common.tiny_image(50, 70, seed=1)
  rgba = np.concatenate([base, common.tiny_image(50, 70, seed=2)[..., :1]], axis=-1)
  images = [
      Image.fromarray(base),
      Image.fromarray(base).convert("L"),  # grayscale
      Image.fromarray(rgba, "RGBA"),  # transparency composited on white
      common.tiny_image(100, 30, seed=3),
  ]
  ref_pixels, ref_grid = _reference(images, **SMALL)
  ours = image_processing.ImageProcessor(**SMALL)(images)
  np.testing.assert_array_equal(ours.image_grid_thw, ref_grid)
  np.testing.assert_allclose(ours.pixel_values, ref_pixels, atol=1e-5, rtol=0)


def test_smart_resize_hand_computed():
  # 30x40 = 1200 px < 3136: beta = sqrt(3136/1200) = 1.6166; ceil(30*1.6166/28)*28 = 56,
  # ceil(40*1.6166/28)*28 = 84.
  assert image_processing.smart_resize(30, 40, factor=28, min_pixels=3136, max_pixels=10**6) == (56, 84)
  # 70 / 28 = 2.5 rounds half to even -> 2 * 28 = 56; 98 / 28 = 3.5 -> 4 * 28 = 112.
  assert image_processing.smart_resize(70, 98, factor=28, min_pixels=28, max_pixels=10**6) == (56, 112)
  with pytest.raises(ValueError, match="aspect ratio"):
    image_processing.smart_resize(1, 201, factor=28, min_pixels=28, max_pixels=10**6)


def test_patch_layout_by_hand():
  # A 28x28 image (one merge window of 2x2 patches) with patch-constant values: patch (i, j)
  # of the 2x2 grid has value v = 10*i + j in every pixel and channel, so after rescale and
  # normalisation row r = 2*i + j of pixel_values is (v/255 - mean_c) / std_c per channel.
  image = np.zeros((28, 28, 3), np.uint8)
  for i in range(2):
    for j in range(2):
      image[14 * i:14 * (i + 1), 14 * j:14 * (j + 1)] = 10 * i + j
  proc = image_processing.ImageProcessor(min_pixels=28 * 28, max_pixels=28 * 28)
  out = proc([image])
  assert out.pixel_values.shape == (4, 3 * 2 * 14 * 14)
  for i in range(2):
    for j in range(2):
      row = out.pixel_values[2 * i + j].reshape(3, 2, 14, 14)
      for c in range(3):
        expected = (np.float32(10 * i + j) / 255 - image_processing.CLIP_MEAN[c]) / image_processing.CLIP_STD[c]
        np.testing.assert_allclose(row[c], expected, atol=1e-6)


def test_token_counts():
  proc = image_processing.ImageProcessor()
  assert proc.grid_thw(224, 224) == (1, 16, 16)
  assert proc.num_tokens(224, 224) == 64
  assert image_processing.num_image_tokens((1, 4, 6), merge_size=2) == 6
  np.testing.assert_array_equal(
      image_processing.image_token_counts(np.array([[1, 4, 6], [1, 16, 16]]), 2), [6, 64])


def test_from_dict_reads_hf_preprocessor_config():
  proc = image_processing.ImageProcessor.from_dict(
      {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2,
       "temporal_patch_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
  assert proc.max_pixels == 12845056 and proc.image_mean == (0.5, 0.5, 0.5)
  proc = image_processing.ImageProcessor.from_dict({"size": {"shortest_edge": 100, "longest_edge": 900}})
  assert (proc.min_pixels, proc.max_pixels) == (100, 900)


def test_rejects_float_arrays():
  with pytest.raises(TypeError, match="uint8"):
    image_processing.ImageProcessor()([np.zeros((28, 28, 3), np.float32)])
