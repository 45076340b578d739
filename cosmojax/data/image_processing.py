"""Qwen2-VL image processing on the host (NumPy + PIL).

Reproduces transformers' `Qwen2VLImageProcessorPil` value for value:

1. convert to RGB (transparent images are composited onto white);
2. `smart_resize`: the size closest to the original whose sides are multiples of
   factor = patch_size * merge_size and whose area lies in [min_pixels, max_pixels], then a
   PIL resize with BICUBIC resampling on the uint8 image;
3. rescale by 1/255 (computed in float64, stored as float32) and normalise per channel with
   the CLIP mean and std (float32): x = (x / 255 - mean_c) / std_c;
4. patchify: the image [C, H, W] is duplicated temporal_patch_size times (a still image is a
   one-frame video) and cut into patches of patch_size x patch_size, ordered so that the
   merge_size x merge_size patches that the vision tower merges into one token are adjacent:

     pixel_values[(bh * gw/m + bw) * m*m + mh * m + mw, (c * tp + t) * ps*ps + py * ps + px]
       = image[c, (bh*m + mh)*ps + py, (bw*m + mw)*ps + px]

   with grid (gh, gw) = (H/ps, W/ps), m = merge_size, tp = temporal_patch_size.

One image of grid (t, h, w) gives t*h*w patch rows and t*h*w / merge_size**2 language-model
tokens (`num_image_tokens`), the number of `<|image_pad|>` placeholders it needs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

# OpenAI CLIP normalisation constants (as in transformers.image_utils).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT_RATIO = 200


@dataclasses.dataclass(frozen=True)
class ProcessedImages:
  """Patches of a list of images, concatenated in order.

  Attributes:
    pixel_values: [num_patches, C * temporal_patch_size * patch_size**2] float32.
    image_grid_thw: [num_images, 3] int64, (grid_t, grid_h, grid_w) per image, in patches.
  """

  pixel_values: np.ndarray
  image_grid_thw: np.ndarray


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
  """Qwen2-VL / Qwen2.5-VL image processor (host side).

  Attributes:
    min_pixels: lower bound on the resized area (H * W).
    max_pixels: upper bound on the resized area.
    patch_size: spatial patch size of the vision tower.
    temporal_patch_size: frames per temporal patch; a still image is repeated this often.
    merge_size: side of the square of patches merged into one language-model token.
    image_mean: per-channel mean subtracted after rescaling to [0, 1].
    image_std: per-channel standard deviation divided by after the mean.
    resample: PIL resampling filter of the resize.
  """

  min_pixels: int = 56 * 56
  max_pixels: int = 28 * 28 * 1280
  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2
  image_mean: tuple[float, float, float] = CLIP_MEAN
  image_std: tuple[float, float, float] = CLIP_STD
  resample: int = int(Image.Resampling.BICUBIC)

  def __post_init__(self):
    if self.min_pixels <= 0 or self.max_pixels < self.min_pixels:
      raise ValueError(
          f"ImageProcessor: need 0 < min_pixels <= max_pixels, got {self.min_pixels}, "
          f"{self.max_pixels}."
      )

  @property
  def factor(self) -> int:
    """Resized sides are multiples of this many pixels."""
    return self.patch_size * self.merge_size

  @property
  def patch_dim(self) -> int:
    """Length of one row of `pixel_values`: C * temporal_patch_size * patch_size**2."""
    return 3 * self.temporal_patch_size * self.patch_size**2

  @classmethod
  def from_pretrained(cls, path: str) -> "ImageProcessor":
    """Reads `preprocessor_config.json` of a Hugging Face Qwen2(.5)-VL checkpoint directory."""
    config_path = os.path.join(path, "preprocessor_config.json")
    with open(config_path, encoding="utf-8") as f:
      config = json.load(f)
    return cls.from_dict(config)

  @classmethod
  def from_dict(cls, config: dict[str, Any]) -> "ImageProcessor":
    """Builds from a Hugging Face preprocessor config dict (size or min/max_pixels keys)."""
    size = config.get("size") or {}
    kwargs: dict[str, Any] = {}
    min_pixels = config.get("min_pixels", size.get("shortest_edge"))
    max_pixels = config.get("max_pixels", size.get("longest_edge"))
    if min_pixels is not None:
      kwargs["min_pixels"] = int(min_pixels)
    if max_pixels is not None:
      kwargs["max_pixels"] = int(max_pixels)
    for key in ("patch_size", "temporal_patch_size", "merge_size", "resample"):
      if key in config:
        kwargs[key] = int(config[key])
    for key in ("image_mean", "image_std"):
      if key in config:
        kwargs[key] = tuple(float(v) for v in config[key])
    return cls(**kwargs)

  def target_size(self, height: int, width: int) -> tuple[int, int]:
    """The resized (height, width) of an image (transformers' `smart_resize`)."""
    return smart_resize(
        height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
    )

  def grid_thw(self, height: int, width: int) -> tuple[int, int, int]:
    """(grid_t, grid_h, grid_w) in patches of an image of the given original size."""
    resized_h, resized_w = self.target_size(height, width)
    return 1, resized_h // self.patch_size, resized_w // self.patch_size

  def num_tokens(self, height: int, width: int) -> int:
    """Language-model placeholder tokens of an image of the given original size."""
    return num_image_tokens(self.grid_thw(height, width), self.merge_size)

  def process_one(self, image: Any) -> tuple[np.ndarray, np.ndarray]:
    """Processes one image.

    Args:
      image: a PIL image, or a uint8 array [H, W], [H, W, 1], [H, W, 3] or [H, W, 4].

    Returns:
      (pixel_values [grid_t*grid_h*grid_w, patch_dim] float32, grid_thw [3] int64).
    """
    rgb = to_rgb_array(image)  # [H, W, 3] uint8
    height, width = rgb.shape[:2]
    resized_h, resized_w = self.target_size(height, width)
    resized = np.asarray(
        Image.fromarray(rgb).resize((resized_w, resized_h), resample=self.resample)
    )
    chw = (resized.astype(np.float64) * (1 / 255)).astype(np.float32).transpose(2, 0, 1)
    mean = np.asarray(self.image_mean, np.float32)[:, None, None]
    std = np.asarray(self.image_std, np.float32)[:, None, None]
    chw = (chw - mean) / std
    patches = self._patchify(chw)
    grid = np.array([1, resized_h // self.patch_size, resized_w // self.patch_size], np.int64)
    return patches, grid

  def __call__(self, images: Sequence[Any]) -> ProcessedImages:
    """Processes a list of images; their patches are concatenated in order."""
    patches, grids = [], []
    for image in images:
      p, g = self.process_one(image)
      patches.append(p)
      grids.append(g)
    if not patches:
      return ProcessedImages(
          np.zeros((0, self.patch_dim), np.float32), np.zeros((0, 3), np.int64)
      )
    return ProcessedImages(np.concatenate(patches, axis=0), np.stack(grids))

  def _patchify(self, chw: np.ndarray) -> np.ndarray:
    """[C, H, W] -> [grid_h*grid_w, C*tp*ps*ps] in merge-window order (module docstring)."""
    c, h, w = chw.shape
    ps, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
    gh, gw = h // ps, w // ps
    x = chw.reshape(c, gh // m, m, ps, gw // m, m, ps)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # [gh/m, gw/m, m, m, C, ps, ps]
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], tp, ps, ps))
    return np.ascontiguousarray(x).reshape(gh * gw, c * tp * ps * ps)


def smart_resize(
    height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
  """Sides that are multiples of `factor`, area in [min_pixels, max_pixels], aspect kept.

  Rounds each side to the nearest multiple of `factor` (Python's round: half to even); if the
  area is then above `max_pixels` (below `min_pixels`), both sides are scaled by
  sqrt(H*W / max_pixels) (sqrt(min_pixels / (H*W))) and floored (ceiled) to multiples of
  `factor`, never below `factor`.
  """
  if min(height, width) <= 0:
    raise ValueError(f"smart_resize: image size {height}x{width} is empty.")
  if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
    raise ValueError(
        f"smart_resize: aspect ratio of a {height}x{width} image is above {MAX_ASPECT_RATIO}."
    )
  h_bar = round(height / factor) * factor
  w_bar = round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt((height * width) / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def num_image_tokens(grid_thw: Sequence[int] | np.ndarray, merge_size: int) -> int:
  """Placeholder tokens of one image: grid_t * grid_h * grid_w // merge_size**2."""
  t, h, w = (int(v) for v in grid_thw)
  return t * h * w // merge_size**2


def image_token_counts(image_grid_thw: np.ndarray, merge_size: int) -> np.ndarray:
  """Placeholder tokens per image. image_grid_thw: [num_images, 3] -> [num_images] int64."""
  grid = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
  return grid.prod(axis=1) // merge_size**2


def to_rgb_array(image: Any) -> np.ndarray:
  """A PIL image or uint8 array as a uint8 RGB array [H, W, 3] (alpha composited on white)."""
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8:
      raise TypeError(f"image arrays must be uint8, got {image.dtype} of shape {image.shape}.")
    if image.ndim == 3 and image.shape[-1] == 1:
      image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] == 3:
      return image
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 4)):
      raise ValueError(f"image arrays must be [H, W] or [H, W, 1|3|4], got {image.shape}.")
    image = Image.fromarray(image)
  if not isinstance(image, Image.Image):
    raise TypeError(f"expected a PIL image or a uint8 array, got {type(image).__name__}.")
  if "A" in image.getbands() or image.info.get("transparency") is not None:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
  return np.asarray(image.convert("RGB"))


def load_image(path: str) -> np.ndarray:
  """Decodes a local image file into a uint8 RGB array [H, W, 3]."""
  with Image.open(path) as image:
    image.load()
    return to_rgb_array(image)
