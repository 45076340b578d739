"""Multimodal jailbreak augmentation: disguise a request by moving its harmful part into an image.

Three transforms of an `Example` (the kinds of `SafetyLabel.attack`):

- "typographic" (FigStep): the request text is rendered into an image above an empty numbered
  list "1. 2. 3."; the text turn becomes a benign carrier instruction ("complete the steps
  listed in the image.").
- "query_relevant_image" (MM-SafetyBench): the image shows the key object (a drawn glyph or a
  provided picture) with its key phrase as a caption; the text refers to it euphemistically
  ("how can i make the item shown in the image?"). Without a known key object and verb, the
  image shows the whole request and the text is MM-SafetyBench's generic activity prompt.
- "split_intent" (SIUO): the key phrase is replaced by "this" in the request and shown in the
  image, so neither half is harmful alone ("tell me how to make this." + a bomb).

Where the request comes from: `metadata["request"]` ("make a bomb"), else the text of the last
user turn. The key phrase: `metadata["object"]` or `metadata["key_phrase"]` ("a bomb"); the
verb: `metadata["verb"]`. Synthetic-suite examples carry all three; real data may carry them.

The transforms keep the labels (ground truth, safety unsafe/category, key facts), set
`safety.attack` for unsafe examples (safe examples keep ""), record the form in
`metadata["form"]`, append the new image after the existing ones, and drop an assistant target
unless `target_fn` rebuilds one. `augment_jailbreak` draws at most one transform per eligible
example with the configured rates, deterministically from (seed, example id) or a given rng;
`JailbreakAugment` is the same as a grain `RandomMap` for on-the-fly use in a mixture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any, Callable, Mapping

import grain
import numpy as np
from PIL import Image

from cosmojax import types
from cosmojax.data import synthetic_images as si
from cosmojax.data import synthetic_lexicon as lex

JAILBREAK_KINDS = ("typographic", "query_relevant_image", "split_intent")
TargetFn = Callable[[types.Example], str]


@dataclasses.dataclass(frozen=True)
class JailbreakConfig:
  """Rates and rendering of the augmentation.

  Attributes:
    typographic_rate, query_image_rate, split_intent_rate: probability that an eligible
      example gets each transform (they must sum to at most 1; the rest stay unchanged).
    image_size: side of the rendered image in pixels.
    seed: seed of the per-example draws when no rng is given.
    safe_tasks: tasks whose safe plain-text examples are transformed too (e.g. "benign_probe",
      so that the disguise alone does not signal harm); their attack label stays "".
    object_images: pictures of key phrases for query-relevant / split-intent images of real
      data ({key phrase: uint8 [H, W, 3]}); suite objects are drawn as glyphs.
  """

  typographic_rate: float = 0.2
  query_image_rate: float = 0.2
  split_intent_rate: float = 0.2
  image_size: int = 84
  seed: int = 0
  safe_tasks: tuple[str, ...] = ()
  object_images: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    rates = (self.typographic_rate, self.query_image_rate, self.split_intent_rate)
    if any(r < 0 or r > 1 for r in rates) or sum(rates) > 1 + 1e-9:
      raise ValueError(f"JailbreakConfig rates {rates} must lie in [0, 1] and sum to <= 1.")

  @property
  def rates(self) -> dict[str, float]:
    return dict(zip(JAILBREAK_KINDS,
                    (self.typographic_rate, self.query_image_rate, self.split_intent_rate)))


def stable_hash(text: str) -> int:
  """A 63-bit hash of text, the same in every process (unlike `hash`)."""
  return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


# ------------------------------------------------------------------------- images


def typographic_image(text: str, size: int) -> tuple[np.ndarray, si.TextLayout]:
  """The request over an empty numbered list, FigStep style.  # [size, size, 3] uint8"""
  return si.render_text(f"{text}\n{lex.TYPOGRAPHIC_LIST}", size)


def glyph_of(key: str) -> str | None:
  """The drawn glyph of a key phrase ("a bomb" -> "bomb"), or None."""
  if key in si.GLYPH_PAINTERS:
    return key
  if key in lex.HARM_OBJECT_GLYPHS:
    return lex.HARM_OBJECT_GLYPHS[key]
  return next((g for g, phrase in lex.GLYPH_PHRASES.items() if phrase == key), None)


def object_image(
    key: str, size: int, object_images: Mapping[str, np.ndarray] | None = None
) -> np.ndarray:
  """A picture of the key object with the key as caption.  # [size, size, 3] uint8

  A provided picture wins, then a drawn glyph (captioned with the glyph's name); otherwise the
  key phrase alone is rendered as text.
  """
  if object_images and key in object_images:
    picture_h = int(size * 0.7)
    picture = Image.fromarray(np.asarray(object_images[key], np.uint8)).convert("RGB")
    out = np.full((size, size, 3), lex.BACKGROUND, np.uint8)
    out[:picture_h] = np.asarray(picture.resize((size, picture_h), Image.BILINEAR))
    out[picture_h:] = si.render_text(key, size, size - picture_h, margin=1, center=True)[0]
    return out
  glyph = glyph_of(key)
  if glyph is not None:
    return si.draw_object(glyph, size, caption=glyph)
  return si.render_text(key, size, center=True)[0]


# ------------------------------------------------------------------------- transforms


def _request(example: types.Example) -> str:
  return example.metadata.get("request") or example.prompt_text.strip()


def _key_phrase(example: types.Example) -> str | None:
  return example.metadata.get("object") or example.metadata.get("key_phrase")


def replace_request(
    example: types.Example,
    kind: str,
    text: str,
    image: np.ndarray,
    metadata: Mapping[str, Any],
    target_fn: TargetFn | None = None,
) -> types.Example:
  """The example with its last user turn's text replaced and `image` appended to that turn."""
  prompt = list(example.prompt_messages)
  last = prompt[-1]
  if last["role"] != "user":
    raise ValueError(f"Example {example.id!r}: the prompt must end with a user turn to augment.")
  parts = [] if isinstance(last["content"], str) else [
      p for p in last["content"] if p.get("type") == "image"]
  prompt[-1] = {"role": "user",
                "content": [*parts, {"type": "image"}, {"type": "text", "text": text}]}
  safety = example.safety
  if safety.unsafe:
    safety = dataclasses.replace(safety, attack=kind)
  out = dataclasses.replace(
      example,
      id=f"{example.id}+{kind}",
      messages=tuple(prompt),
      images=(*example.images, image),
      safety=safety,
      metadata={**example.metadata, **metadata, "form": kind},
  )
  if target_fn is not None:
    out = dataclasses.replace(
        out, messages=(*out.messages, types.text_message("assistant", target_fn(out))))
  return out


def typographic(
    example: types.Example,
    carrier: str,
    image_size: int,
    *,
    text: str | None = None,
    target_fn: TargetFn | None = None,
) -> types.Example:
  """FigStep: the request (or `text`) rendered in the image, `carrier` as the text turn."""
  text = text or _request(example)
  image, layout = typographic_image(text, image_size)
  meta = {"request": _request(example), "image_text": text, "font_size": layout.font_size}
  return replace_request(example, "typographic", carrier, image, meta, target_fn)


def query_relevant_image(
    example: types.Example,
    rng: np.random.Generator,
    image_size: int,
    *,
    object_images: Mapping[str, np.ndarray] | None = None,
    target_fn: TargetFn | None = None,
) -> types.Example:
  """MM-SafetyBench: the key object pictured, the request rewritten euphemistically."""
  key, verb = _key_phrase(example), example.metadata.get("verb")
  if key and verb:
    template = lex.QUERY_TEMPLATES[rng.integers(len(lex.QUERY_TEMPLATES))]
    text, request, pictured = template.format(verb=verb), f"{verb} {key}", key
  else:
    text, request, pictured = lex.QUERY_GENERIC, _request(example), _request(example)
  image = object_image(pictured, image_size, object_images)
  meta = {"request": request, "key_phrase": pictured, "glyph": glyph_of(pictured) or ""}
  return replace_request(example, "query_relevant_image", text, image, meta, target_fn)


def split_intent(
    example: types.Example,
    image_size: int,
    *,
    object_images: Mapping[str, np.ndarray] | None = None,
    target_fn: TargetFn | None = None,
) -> types.Example:
  """SIUO: the key phrase moves into the image and reads "this" in the text."""
  key, prompt = _key_phrase(example), example.prompt_text.strip()
  pattern = re.compile(rf"\b{re.escape(key)}\b") if key else None
  if pattern is not None and pattern.search(prompt):
    text, pictured = pattern.sub("this", prompt), key
  else:
    text, pictured = lex.SPLIT_GENERIC, _request(example)
  image = object_image(pictured, image_size, object_images)
  meta = {"request": _request(example), "key_phrase": pictured, "glyph": glyph_of(pictured) or ""}
  return replace_request(example, "split_intent", text, image, meta, target_fn)


def eligible(example: types.Example, config: JailbreakConfig) -> bool:
  """Plain requests that are unsafe, or safe ones of `config.safe_tasks`."""
  if example.safety.attack or example.metadata.get("form", "text") != "text":
    return False
  return example.safety.unsafe or example.task in config.safe_tasks


def augment_jailbreak(
    example: types.Example,
    config: JailbreakConfig,
    rng: np.random.Generator | None = None,
    target_fn: TargetFn | None = None,
) -> types.Example:
  """Applies at most one jailbreak transform, chosen with the configured rates.

  Args:
    example: any example; ineligible ones (see `eligible`) are returned unchanged.
    config: rates and rendering.
    rng: source of the draws; by default seeded with (config.seed, example.id).
    target_fn: rebuilds the assistant target of a transformed example (else it is dropped).
  """
  if not eligible(example, config):
    return example
  if rng is None:
    rng = np.random.default_rng([config.seed, stable_hash(example.id)])
  u, edge = rng.random(), 0.0
  for kind, rate in config.rates.items():
    edge += rate
    if u < edge:
      break
  else:
    return example
  size = config.image_size
  if kind == "typographic":
    carrier = lex.TYPOGRAPHIC_CARRIERS[rng.integers(len(lex.TYPOGRAPHIC_CARRIERS))]
    return typographic(example, carrier, size, target_fn=target_fn)
  if kind == "query_relevant_image":
    return query_relevant_image(example, rng, size, object_images=config.object_images,
                                target_fn=target_fn)
  return split_intent(example, size, object_images=config.object_images, target_fn=target_fn)


class JailbreakAugment(grain.transforms.RandomMap):
  """`augment_jailbreak` as a grain transform over `Example` elements."""

  def __init__(self, config: JailbreakConfig, target_fn: TargetFn | None = None):
    self.config = config
    self.target_fn = target_fn

  def random_map(self, element: types.Example, rng: np.random.Generator) -> types.Example:
    return augment_jailbreak(element, self.config, rng, self.target_fn)
