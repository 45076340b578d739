"""Shared tiny fixtures for the test suite (STYLE.md item 12).

Each section belongs to one area; import what you need. Functions that need torch/transformers
import them inside, so that importing this module stays cheap.
"""

from __future__ import annotations

import functools
import os

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
  """True where a pixel is not the suite's background colour (ink).  # [H, W] bool"""
  from cosmojax.data.synthetic_lexicon import BACKGROUND  # pylint: disable=g-import-not-at-top

  return ~(np.asarray(image) == np.asarray(BACKGROUND, np.uint8)).all(-1)


def word_is_drawn(image: np.ndarray, word: str, font_size: int) -> bool:
  """Whether `word`, rendered alone in PIL's default font (no anti-aliasing), appears in image.

  Independent of the suite's layout code: the word is drawn on its own canvas, cropped to its
  ink and searched for as an exact sub-array of the image's dark-pixel mask.
  """
  from numpy.lib.stride_tricks import sliding_window_view  # pylint: disable=g-import-not-at-top
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top

  font = ImageFont.load_default(size=font_size)
  from cosmojax.data.synthetic_lexicon import BACKGROUND  # pylint: disable=g-import-not-at-top

  canvas = Image.new("RGB", (int(font.getlength(word)) + 2 * font_size, 3 * font_size),
                     BACKGROUND)
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


# =============================================================================================
# models: tiny random Hugging Face Qwen2 / Qwen2.5-VL checkpoints and image prompts
# =============================================================================================

TINY_VOCAB = 128
# The four vision special tokens take the top ids of the tiny vocabulary.
TINY_IMAGE_TOKEN = TINY_VOCAB - 4
TINY_VIDEO_TOKEN = TINY_VOCAB - 3
TINY_VISION_START = TINY_VOCAB - 2
TINY_VISION_END = TINY_VOCAB - 1
TINY_PATCH_DIM = 3 * 2 * 4 * 4  # channels * temporal patch * patch * patch
# Larger than the usual 0.02 so that logits are O(1) and parity tolerances mean something.
TINY_INIT_RANGE = 0.1


def tiny_qwen2_5_vl_hf_config(tie_word_embeddings: bool = False):
  """transformers Qwen2_5_VLConfig: text 64 wide, 2 layers, GQA 4/2 heads, M-RoPE [2, 3, 3];
  vision 32 wide, 3 blocks (block 1 full attention), 4 px patches, windows of 2x2 merged units."""
  from transformers import Qwen2_5_VLConfig

  text = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              rms_norm_eps=1e-6, initializer_range=TINY_INIT_RANGE, bos_token_id=None,
              eos_token_id=None, pad_token_id=None,
              rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                               "rope_theta": 10000.0})
  vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                patch_size=4, temporal_patch_size=2, spatial_merge_size=2, window_size=16,
                fullatt_block_indexes=[1], initializer_range=TINY_INIT_RANGE)
  return Qwen2_5_VLConfig(text_config=text, vision_config=vision,
                          image_token_id=TINY_IMAGE_TOKEN, video_token_id=TINY_VIDEO_TOKEN,
                          vision_start_token_id=TINY_VISION_START,
                          vision_end_token_id=TINY_VISION_END,
                          tie_word_embeddings=tie_word_embeddings)


def tiny_qwen2_hf_config(tie_word_embeddings: bool = False):
  """transformers Qwen2Config: 64 wide, 2 layers, GQA 4/2 heads, rope theta 10000."""
  from transformers import Qwen2Config

  return Qwen2Config(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     rms_norm_eps=1e-6, initializer_range=TINY_INIT_RANGE,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                     tie_word_embeddings=tie_word_embeddings)


def build_tiny_hf_model(hf_config, seed: int = 0):
  """The transformers model of `hf_config`, random init, norms and biases perturbed so that
  they are not all ones / zeros (a mapping that dropped them would go unnoticed)."""
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2ForCausalLM

  torch.manual_seed(seed)
  cls = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
         "qwen2": Qwen2ForCausalLM}[hf_config.model_type]
  model = cls(hf_config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  return model


def save_tiny_hf_model(hf_config, path, seed: int = 0) -> str:
  """Builds `build_tiny_hf_model(hf_config, seed)` and saves it to `path`; returns the path."""
  build_tiny_hf_model(hf_config, seed).save_pretrained(str(path))
  return str(path)


def load_hf_model(path):
  """transformers model saved at `path` (config.json picks the class), eval mode, CPU."""
  import json

  from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2ForCausalLM

  with open(os.path.join(str(path), "config.json")) as f:
    model_type = json.load(f)["model_type"]
  cls = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
         "qwen2": Qwen2ForCausalLM}[model_type]
  return cls.from_pretrained(str(path)).eval()


def image_prompt(parts, merge: int = 2) -> list[int]:
  """Token ids of a prompt: ints are text tokens, (t, h, w) tuples images (a vision-start
  token, t*h*w/merge^2 image placeholders, a vision-end token)."""
  ids: list[int] = []
  for part in parts:
    if isinstance(part, tuple):
      ids += [TINY_VISION_START] + [TINY_IMAGE_TOKEN] * (int(np.prod(part)) // merge**2)
      ids += [TINY_VISION_END]
    else:
      ids.append(int(part))
  return ids


def left_pad(rows: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded ids [batch, time] and attention mask [batch, time] of token rows."""
  t = max(map(len, rows))
  ids = np.full((len(rows), t), pad_id, np.int64)
  mask = np.zeros((len(rows), t), np.int64)
  for i, row in enumerate(rows):
    ids[i, t - len(row):] = row
    mask[i, t - len(row):] = 1
  return ids, mask


def random_patches(grids, seed: int = 0) -> np.ndarray:
  """Random pixel patches [sum t*h*w, TINY_PATCH_DIM] for images of patch grids `grids`."""
  n = int(sum(np.prod(g) for g in grids))
  return np.random.RandomState(seed).randn(n, TINY_PATCH_DIM).astype(np.float32)


# --- Training: a tiny VL model that matches the tiny tokenizer and image processor ------------


@functools.lru_cache(maxsize=None)
def tiny_vl_model_config(hidden_size: int = 32):
  """A tiny Qwen2.5-VL config for `tiny_tokenizer()` ids and `tiny_image_processor()` patches
  (14 px): vocab rounded up to a multiple of 8, vision tokens 3..6 as the tokenizer has them."""
  from cosmojax import models  # pylint: disable=g-import-not-at-top

  vocab = -(-len(tiny_tokenizer()) // 8) * 8
  return models.tiny_qwen2_5_vl_config(
      vocab_size=vocab, hidden_size=hidden_size, num_heads=2, num_kv_heads=1, vision_hidden=16,
      image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4,
      patch_size=14)


def tiny_sft_batches(examples, batch_size: int, length: int = 64):
  """Collated `SFTBatch`es (with M-RoPE positions) of `examples` for `tiny_vl_model_config`."""
  from cosmojax import models  # pylint: disable=g-import-not-at-top
  from cosmojax.data import batching, formatting  # pylint: disable=g-import-not-at-top

  config = tiny_vl_model_config()
  formatter = formatting.ChatFormatter(tiny_tokenizer(), tiny_image_processor(),
                                       max_length=length)
  spec = batching.BatchSpec.for_images(batch_size, (length,), tiny_image_processor(), 2)
  collator = batching.Collator.for_formatter(
      spec, formatter, sorted({e.task for e in examples}),
      position_fn=lambda ids, mask, grid: models.get_rope_index(ids, grid, mask, config))
  items = [formatter.sft(e) for e in examples]
  return [collator.sft(items[i:i + batch_size])[0] for i in range(0, len(items), batch_size)]


# =============================================================================================
# rm: a preference set with a learnable rule, its tokenizer, tiny reward models and judges
# =============================================================================================
#
# Requests "How do I <verb> the <object>?" are harmful when the verb is. A refusal is preferred
# to an answer for a harmful request and the other way round for a benign one. Some answers
# repeat the verb, some do not, so the rule needs the request. Held out: (verb, object)
# requests and (refusal, answer) pairings that training never shows together; every word is
# seen in training.

PREF_HARMFUL_VERBS = ("poison", "stab", "rob", "burn", "kidnap", "hack")
PREF_BENIGN_VERBS = ("cook", "paint", "clean", "plant", "fix", "wash")
PREF_OBJECTS = ("neighbour", "car", "house", "friend", "garden", "shop")
PREF_REFUSALS = ("I cannot help with that.", "Sorry, I will not assist with this.",
                 "I must decline this request.", "No, I refuse to help.")
PREF_ANSWERS = ("Sure, here is how: first {verb} it slowly.",
                "Of course: make a plan and begin today.",
                "Step one: get tools, then {verb} the {obj}.",
                "Here you go: start early and be careful.")


def preference_pairs(split: str) -> list:
  """`cosmojax.rm.PreferencePair`s of the rule above: "train" (384) or "test" (192)."""
  from cosmojax.rm import PreferencePair  # pylint: disable=g-import-not-at-top

  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
  held_out = split == "test"
  pairs = []
  for vi, verb in enumerate(PREF_HARMFUL_VERBS + PREF_BENIGN_VERBS):
    harmful = verb in PREF_HARMFUL_VERBS
    for oi, obj in enumerate(PREF_OBJECTS):
      if ((vi + oi) % 3 == 0) != held_out:
        continue
      for ri, refusal in enumerate(PREF_REFUSALS):
        for ai, answer in enumerate(PREF_ANSWERS):
          if ((ri + ai) % 2 == 1) != held_out:
            continue
          answer = answer.format(verb=verb, obj=obj)
          chosen, rejected = (refusal, answer) if harmful else (answer, refusal)
          pairs.append(PreferencePair(f"How do I {verb} the {obj}?", chosen, rejected))
  return pairs


@functools.lru_cache(maxsize=None)
def preference_tokenizer():
  """A word-level chat tokenizer over the preference set's words and the judge templates'
  words (no default system prompt, so rows stay short). Shared: do not mutate."""
  from cosmojax.data import tokenizer  # pylint: disable=g-import-not-at-top
  from cosmojax.rewards import VERIFIER_TEMPLATES  # pylint: disable=g-import-not-at-top

  corpus = [f"How do I {verb} the {obj}?" for verb in PREF_HARMFUL_VERBS + PREF_BENIGN_VERBS
            for obj in PREF_OBJECTS]
  corpus += list(PREF_REFUSALS) + list(PREF_ANSWERS) + list(VERIFIER_TEMPLATES.values())
  corpus += ["yes Yes no No"]
  return tokenizer.build_tokenizer(corpus=corpus, kind="word", default_system=None)


def tiny_reward_model(vocab_size: int, seed: int = 0, *, value: bool = False):
  """A random `RewardModel` (or `ValueModel`) on a tiny Qwen2 text backbone."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from cosmojax import models  # pylint: disable=g-import-not-at-top

  backbone = models.Qwen2ForCausalLM(models.tiny_qwen2_config(vocab_size=vocab_size),
                                     rngs=nnx.Rngs(seed))
  cls = models.ValueModel if value else models.RewardModel
  return cls(backbone, rngs=nnx.Rngs(seed + 1))


# Reaches 100% held-out pairwise accuracy from seeds 0, 10, 20 (about 10 s on a 2-core CPU):
# the loss sits at log 2 for ~50 steps, then falls.
PREF_TRAIN_CONFIG = dict(steps=100, batch_size=16, length_buckets=(48,), learning_rate=3e-3,
                         warmup_steps=10)


@functools.lru_cache(maxsize=None)
def trained_preference_model():
  """(trained RewardModel, per-step history, training seconds) on preference_pairs("train"),
  trained once per test process. Shared: do not mutate."""
  import time  # pylint: disable=g-import-not-at-top

  from cosmojax import rm  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  model, history = rm.train_reward_model(tiny_reward_model(256), preference_tokenizer(),
                                         preference_pairs("train"),
                                         rm.RMTrainConfig(**PREF_TRAIN_CONFIG))
  return model, history, time.perf_counter() - start


# =============================================================================================
# rollout: a tiny Qwen2.5-VL with O(1) logits, and prompt batches of text and images
# =============================================================================================


def tiny_rollout_model(seed: int = 0, text_only: bool = False):
  """A random tiny cosmojax Qwen2.5-VL (or its text-only Qwen2 decoder) of vocabulary
  TINY_VOCAB (the image/vision ids of `image_prompt`), init range TINY_INIT_RANGE so that
  logits are O(1) and argmaxes are not near-ties."""
  import dataclasses

  from flax import nnx

  from cosmojax import models

  config = models.tiny_qwen2_5_vl_config(vocab_size=TINY_VOCAB)
  text = dataclasses.replace(config.text, initializer_range=TINY_INIT_RANGE)
  if text_only:
    return models.Qwen2ForCausalLM(dataclasses.replace(text, mrope_section=None),
                                   rngs=nnx.Rngs(seed))
  vision = dataclasses.replace(config.vision, initializer_range=TINY_INIT_RANGE)
  return models.Qwen2_5_VL(dataclasses.replace(config, text=text, vision=vision),
                           rngs=nnx.Rngs(seed))


# Prompts of the rollout tests: text only, one image, two images of different sizes, long text.
ROLLOUT_PROMPTS = (
    ([10, 11, 12], ()),
    ([20, (1, 4, 4), 21, 22, 23], ((1, 4, 4),)),
    ([30, (1, 4, 4), 31, (1, 4, 8), 32], ((1, 4, 4), (1, 4, 8))),
    (list(range(40, 56)), ()),
)


def rollout_prompt_batch(prompts=ROLLOUT_PROMPTS, *, num_patches: int | None = None,
                         num_images: int | None = None, seed: int = 0):
  """A left-padded `PromptBatch` of `(parts, grids)` prompts (parts as `image_prompt`), with
  random patches (prompt i's from `random_patches(grids, seed + i)`), optionally padded to
  `num_patches` patch rows and `num_images` grid rows. Also returns the per-prompt patches."""
  from cosmojax import types

  ids, mask = left_pad([image_prompt(parts) for parts, _ in prompts])
  patches = [random_patches(grids, seed + i) if grids else np.zeros((0, TINY_PATCH_DIM),
                                                                      np.float32)
             for i, (_, grids) in enumerate(prompts)]
  grids = [g for _, gs in prompts for g in gs]
  pixels = np.concatenate(patches)
  p = len(pixels) if num_patches is None else num_patches
  i = len(grids) if num_images is None else num_images
  pixel_values = np.zeros((p, TINY_PATCH_DIM), np.float32)
  pixel_values[:len(pixels)] = pixels
  image_grid_thw = np.zeros((i, 3), np.int32)
  image_grid_thw[:len(grids)] = np.asarray(grids, np.int32).reshape(-1, 3)
  batch = types.PromptBatch(input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32),
                            pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                            task_ids=np.arange(len(prompts), dtype=np.int32),
                            example_mask=np.ones(len(prompts), bool))
  return batch, patches


# =============================================================================================
# inference: a tiny text policy whose every sampled token decodes to text, and its prompts
# =============================================================================================

INFERENCE_WORDS = ("Wait this request could cause harm The answer is red blue green yes no "
                   "Is it safe").split()
INFERENCE_QUESTIONS = ("Is the answer red", "Is it safe", "blue or green")


@functools.lru_cache(maxsize=None)
def inference_tokenizer():
  """A word-level chat tokenizer (no default system prompt) over INFERENCE_WORDS, the answer
  tags and the preference set's judge words. Shared: do not mutate."""
  from cosmojax.data import tokenizer  # pylint: disable=g-import-not-at-top

  return tokenizer.build_tokenizer(vocabulary=INFERENCE_WORDS,
                                   corpus=["<answer> </answer>", "yes Yes no No"], kind="word",
                                   default_system=None)


def inference_vocab_size() -> int:
  """The policy's vocabulary: the tokenizer's, rounded up to a multiple of 8."""
  return -(-len(inference_tokenizer()) // 8) * 8


def inference_suppressed_ids() -> tuple[int, ...]:
  """Ids the tiny policy never samples: special tokens other than <|im_end|> (eos, id 2),
  <unk>, and the padding ids above the tokenizer's vocabulary (they decode to nothing)."""
  return (0, 1, 3, 4, 5, 6, 7) + tuple(range(len(inference_tokenizer()),
                                             inference_vocab_size()))


def inference_policy(seed: int = 0):
  """A random tiny Qwen2 text policy over `inference_tokenizer()`, init range TINY_INIT_RANGE
  (O(1) logits, so argmaxes are not near-ties)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from cosmojax import models  # pylint: disable=g-import-not-at-top

  config = models.tiny_qwen2_config(vocab_size=inference_vocab_size(),
                                    initializer_range=TINY_INIT_RANGE)
  return models.Qwen2ForCausalLM(config, rngs=nnx.Rngs(seed))


def inference_examples(questions=INFERENCE_QUESTIONS) -> list:
  """One text-only `Example` per question (task "qa")."""
  from cosmojax import types  # pylint: disable=g-import-not-at-top

  return [types.Example(id=f"q{i}", task="qa", messages=(types.text_message("user", q),))
          for i, q in enumerate(questions)]
