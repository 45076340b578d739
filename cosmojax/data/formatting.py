"""Chat formatting: an `Example` becomes token ids, masks and image patches.

The conversation is rendered with the tokenizer's own chat template (`apply_chat_template`),
so a real Qwen2.5-VL tokenizer and the tiny built ones format the same way. Each image part
renders as `<|vision_start|><|image_pad|><|vision_end|>`; the single `<|image_pad|>` of the
k-th image is then repeated to that image's token count, grid_t*grid_h*grid_w // merge**2,
the number of embeddings the vision tower emits for it.

SFT (`ChatFormatter.sft`): the loss mask is 1 on the tokens of every assistant turn, from the
first token after `<|im_start|>assistant\\n` through its `<|im_end|>` (the end-of-turn token
the policy must learn to emit), and 0 elsewhere, image blocks included. Turn boundaries are
found by rendering each prefix of the conversation as text (so any prefix-stable template
works) and mapping character spans to tokens through the tokenizer's offsets. Sequences
longer than `max_length` are cut on the right, unless the cut would fall inside an image
block or leave no target token: such examples are dropped and counted in `drops`.

Prompts for RL and evaluation (`ChatFormatter.prompt`): the conversation without its final
assistant turn, ending with the generation prompt (`add_generation_prompt=True`). A prompt
longer than `max_length` is dropped and counted (cutting it would remove the generation
prompt or the question).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import transformers

from cosmojax import types
from cosmojax.data import image_processing
from cosmojax.data import tokenizer as tokenizer_lib

MAX_LOGGED_DROPS = 5
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FormattedExample:
  """One formatted example (host NumPy arrays).

  Attributes:
    example: the source example.
    input_ids: [T] int32 token ids, image placeholders expanded.
    attention_mask: [T] int32 ones.
    loss_mask: [T] int32, 1 on assistant target tokens (all 0 for prompts).
    pixel_values: [num_patches, patch_dim] float32 patches of the example's images.
    image_grid_thw: [num_images, 3] int32 grid per image.
  """

  example: types.Example
  input_ids: np.ndarray
  attention_mask: np.ndarray
  loss_mask: np.ndarray
  pixel_values: np.ndarray
  image_grid_thw: np.ndarray

  @property
  def length(self) -> int:
    return int(self.input_ids.shape[0])


class DropLog:
  """Counts examples the formatter dropped, by reason, and keeps the first messages."""

  def __init__(self):
    self.counts: collections.Counter[str] = collections.Counter()
    self.first_messages: list[str] = []
    self._lock = threading.Lock()

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def add(self, reason: str, message: str) -> None:
    with self._lock:
      self.counts[reason] += 1
      if len(self.first_messages) < MAX_LOGGED_DROPS:
        self.first_messages.append(message)
        _log.warning("dropped an example (%s): %s", reason, message)

  def summary(self) -> str:
    if not self.counts:
      return "no examples dropped"
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
    return f"dropped {self.total} examples ({counts}); first: " + " | ".join(self.first_messages)


class ChatFormatter:
  """Formats examples for SFT and for prompting; thread-safe (grain maps it in threads).

  Args:
    tokenizer: a tokenizer with a chat template and the Qwen special tokens
      (`cosmojax.data.build_tokenizer`, or a real Qwen2.5-VL tokenizer).
    image_processor: the host image processor; its merge_size sets placeholder counts.
    max_length: maximum tokens per example (after placeholder expansion).
    max_images_per_example: examples with more images are dropped (None: no limit).
    load_image: decodes an image path into a uint8 [H, W, 3] array.
  """

  def __init__(
      self,
      tokenizer: transformers.PreTrainedTokenizerBase,
      image_processor: image_processing.ImageProcessor | None = None,
      *,
      max_length: int,
      max_images_per_example: int | None = None,
      load_image: Callable[[str], np.ndarray] = image_processing.load_image,
  ):
    self.tokenizer = tokenizer
    self.image_processor = image_processor or image_processing.ImageProcessor()
    self.max_length = max_length
    self.max_images_per_example = max_images_per_example
    self.load_image = load_image
    self.token_ids = tokenizer_lib.qwen_token_ids(tokenizer)
    self.drops = DropLog()

  def sft(self, example: types.Example | None) -> FormattedExample | None:
    """Formats a conversation ending with an assistant target; None if dropped (or None)."""
    if example is None:
      return None
    messages = example.messages
    if messages[-1]["role"] != "assistant":
      raise ValueError(
          f"Example {example.id!r}: SFT needs a final assistant turn, the last turn is "
          f"{messages[-1]['role']!r}."
      )
    text = self.render(messages, add_generation_prompt=False)
    input_ids, offsets = self._encode(text)
    target = np.zeros(len(input_ids), bool)
    for start, end in self._assistant_spans(example, messages, text):
      target |= (offsets[:, 0] >= start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0])
    return self._finish(example, input_ids, target, allow_truncation=True)

  def prompt(self, example: types.Example | None) -> FormattedExample | None:
    """Formats the prompt turns with the generation prompt; None if dropped (or None)."""
    if example is None:
      return None
    text = self.render(example.prompt_messages, add_generation_prompt=True)
    input_ids, _ = self._encode(text)
    return self._finish(example, input_ids, np.zeros(len(input_ids), bool), allow_truncation=False)

  def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool) -> str:
    """The chat template applied to `messages`, as text."""
    return self.tokenizer.apply_chat_template(
        [_plain_message(m) for m in messages],
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )

  def _encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(encoding["offset_mapping"], np.int64).reshape(-1, 2)
    return np.asarray(encoding["input_ids"], np.int32), offsets

  def _assistant_spans(self, example, messages, text) -> list[tuple[int, int]]:
    """Character spans [start, end) of each assistant turn's content and its <|im_end|>."""
    spans = []
    for k, message in enumerate(messages):
      if message["role"] != "assistant":
        continue
      prefix = self.render(messages[:k], add_generation_prompt=True)
      through = self.render(messages[: k + 1], add_generation_prompt=False)
      if not (text.startswith(prefix) and text.startswith(through) and len(through) >= len(prefix)):
        raise ValueError(
            f"Example {example.id!r}: the chat template does not render turn {k} as an "
            "extension of the earlier turns; loss masks need a prefix-stable template."
        )
      start, end = len(prefix), len(through)
      end_of_turn = text.find(tokenizer_lib.IM_END, start, end)
      spans.append((start, end_of_turn + len(tokenizer_lib.IM_END) if end_of_turn >= 0 else end))
    return spans

  def _finish(self, example, input_ids, target, *, allow_truncation) -> FormattedExample | None:
    ids = self.token_ids
    if np.any(input_ids == ids.video_pad):
      raise ValueError(f"Example {example.id!r}: videos are not supported.")
    n_pads = int(np.sum(input_ids == ids.image_pad))
    if n_pads != len(example.images):
      raise ValueError(
          f"Example {example.id!r}: the rendered chat has {n_pads} <|image_pad|> tokens but the "
          f"example has {len(example.images)} images (does a text part contain the literal "
          "token, or does the chat template drop image parts?)."
      )
    if self.max_images_per_example is not None and n_pads > self.max_images_per_example:
      self.drops.add("too_many_images", f"Example {example.id!r}: {n_pads} images > "
                     f"max_images_per_example {self.max_images_per_example}")
      return None
    images = [self._load(example, k) for k in range(n_pads)]
    counts = [self.image_processor.num_tokens(*image.shape[:2]) for image in images]
    pad_positions = np.flatnonzero(input_ids == ids.image_pad)
    repeats = np.ones(len(input_ids), np.int64)
    repeats[pad_positions] = counts
    input_ids, target = np.repeat(input_ids, repeats), np.repeat(target, repeats)
    blocks = _image_blocks(input_ids, pad_positions, counts, ids)
    for b0, b1 in blocks:
      target[b0:b1] = False
    num_images = n_pads
    if len(input_ids) > self.max_length:
      cut = self.max_length
      reason = None
      if not allow_truncation:
        reason = ("prompt_too_long", f"prompt has {len(input_ids)} tokens > max_length {cut}")
      elif any(b0 < cut < b1 for b0, b1 in blocks):
        k = next(i for i, (b0, b1) in enumerate(blocks) if b0 < cut < b1)
        reason = ("truncation_in_image", f"cutting {len(input_ids)} tokens to max_length {cut} "
                  f"would split image {k} (tokens {blocks[k][0]}..{blocks[k][1] - 1})")
      elif not target[:cut].any():
        reason = ("no_target_after_truncation",
                  f"no assistant token left after cutting {len(input_ids)} tokens to {cut}")
      if reason is not None:
        self.drops.add(reason[0], f"Example {example.id!r}: {reason[1]}; dropped")
        return None
      input_ids, target = input_ids[:cut], target[:cut]
      num_images = sum(b1 <= cut for _, b1 in blocks)
    processed = self.image_processor(images[:num_images])
    return FormattedExample(
        example=example,
        input_ids=input_ids.astype(np.int32),
        attention_mask=np.ones(len(input_ids), np.int32),
        loss_mask=target.astype(np.int32),
        pixel_values=processed.pixel_values,
        image_grid_thw=processed.image_grid_thw.astype(np.int32),
    )

  def _load(self, example: types.Example, k: int) -> np.ndarray:
    image = example.images[k]
    if isinstance(image, str):
      try:
        return self.load_image(image)
      except Exception as e:  # PIL raises many types for corrupt files.
        raise ValueError(
            f"Example {example.id!r}: images[{k}] ({image}) cannot be decoded: {e}") from e
    try:
      return image_processing.to_rgb_array(image)
    except (TypeError, ValueError) as e:
      raise ValueError(f"Example {example.id!r}: images[{k}]: {e}") from e


def _image_blocks(
    input_ids: np.ndarray, pad_positions: np.ndarray, counts: Sequence[int],
    ids: tokenizer_lib.QwenTokenIds,
) -> list[tuple[int, int]]:
  """[start, end) in the expanded ids of each image's placeholders plus its vision start/end.

  pad_positions are the positions of the single `<|image_pad|>` tokens before expansion and
  counts the tokens each expands to.
  """
  blocks = []
  shift = 0
  for position, count in zip(pad_positions, counts):
    start = int(position) + shift
    end = start + int(count)
    shift += int(count) - 1
    if start > 0 and input_ids[start - 1] == ids.vision_start:
      start -= 1
    if end < len(input_ids) and input_ids[end] == ids.vision_end:
      end += 1
    blocks.append((start, end))
  return blocks


def _plain_message(message: Mapping[str, Any]) -> dict[str, Any]:
  content = message["content"]
  if not isinstance(content, str):
    content = [dict(part) for part in content]
  return {"role": message["role"], "content": content}
