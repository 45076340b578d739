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
    "left right top bottom shape shapes count Please step by"
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
