"""Shared tiny fixtures for the tests (tiny configs, tokenizers, images).

Each section belongs to one part of the framework; keep fixtures small and deterministic.
"""

from __future__ import annotations

import functools

import numpy as np

# --- Data: tokenizer, image processor, images, examples ---------------------------------------

# Words of the tiny chat tokenizer: enough for the data tests' conversations.
TINY_VOCABULARY = (
    "How many circles squares are there in the image picture What colour color is it "
    "The answer Answer red green blue yes no I cannot help with that Describe describe "
    "think description a an of and one two three four five six seven eight nine zero "
    "left right top bottom shape shapes count Please step by And"
).split()


@functools.lru_cache(maxsize=None)
def tiny_tokenizer():
  """A word-level Qwen2.5-VL-style chat tokenizer (ids: pad 0, im_start 1, im_end 2,
  vision_start 3, vision_end 4, image_pad 5, video_pad 6, unk 7). Shared: do not mutate."""
  from cosmojax.data import tokenizer  # pylint: disable=g-import-not-at-top

  return tokenizer.build_tokenizer(vocabulary=TINY_VOCABULARY, kind="word")


def tiny_image_processor():
  """An image processor with small pixel bounds: 4..16 patches of 14 px (1..4 tokens)."""
  from cosmojax.data import image_processing  # pylint: disable=g-import-not-at-top

  return image_processing.ImageProcessor(min_pixels=28 * 28, max_pixels=28 * 28 * 4)


def tiny_image(height: int = 56, width: int = 56, seed: int = 0) -> np.ndarray:
  """A random uint8 RGB image [height, width, 3]."""
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def tiny_examples(task: str, n: int, *, num_images: int = 0, seed: int = 0) -> list:
  """`n` counting examples of one task, each with `num_images` random images (sizes vary)."""
  from cosmojax import types  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  examples = []
  for i in range(n):
    images = tuple(
        tiny_image(int(rng.choice([28, 56])), int(rng.choice([28, 56, 84])), seed=seed + i)
        for _ in range(num_images)
    )
    answer = str(int(rng.integers(10)))
    examples.append(types.Example(
        id=f"{task}-{i}",
        task=task,
        messages=(types.user_message("How many circles are there?", num_images),
                  types.text_message("assistant", f"The answer is {answer}")),
        images=images,
        ground_truth=answer,
        answer_type="number",
    ))
  return examples


# --- Synthetic suite: independent readers of rendered images ---------------------------------


def dark_mask(image: np.ndarray) -> np.ndarray:
  """True where a pixel is not white.  # [H, W] bool"""
  return ~(np.asarray(image) == 255).all(-1)


def word_is_drawn(image: np.ndarray, word: str, font_size: int) -> bool:
  """Whether `word`, rendered alone in PIL's default font (no anti-aliasing), appears in image.

  Independent of the suite's layout code: the word is drawn on its own canvas, cropped to its
  ink and searched for as an exact sub-array of the image's dark-pixel mask.
  """
  from numpy.lib.stride_tricks import sliding_window_view  # pylint: disable=g-import-not-at-top
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top

  font = ImageFont.load_default(size=font_size)
  canvas = Image.new("RGB", (int(font.getlength(word)) + 2 * font_size, 3 * font_size), "white")
  draw = ImageDraw.Draw(canvas)
  draw.fontmode = "1"
  draw.text((font_size, font_size), word, font=font, fill=(0, 0, 0))
  ink = dark_mask(np.asarray(canvas))
  ys, xs = np.nonzero(ink)
  template = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
  mask = dark_mask(image)
  if template.shape[0] > mask.shape[0] or template.shape[1] > mask.shape[1]:
    return False
  windows = sliding_window_view(mask, template.shape)
  return bool((windows == template).all(axis=(-2, -1)).any())
