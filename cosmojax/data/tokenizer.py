"""Small Qwen2.5-VL-style tokenizers built from a vocabulary or a corpus.

`build_tokenizer` makes a Hugging Face `tokenizers` model, wraps it as a
`transformers.PreTrainedTokenizerFast` with the Qwen2.5-VL chat template and vision special
tokens, and optionally saves it with `save_pretrained`; `load_tokenizer` reads one back (or a
real Qwen2.5-VL tokenizer) and checks that the special tokens exist.

Special tokens come first, at fixed ids, so that tiny model configs can name them:

  <|endoftext|>=0 (pad)  <|im_start|>=1  <|im_end|>=2 (eos)  <|vision_start|>=3
  <|vision_end|>=4  <|image_pad|>=5  <|video_pad|>=6  (and <unk>=7 for kind="word")

Two kinds:
- "word": a WordLevel model over the given words plus every printable ASCII character,
  newline and tab. Text is split into runs of word characters (\\w+) and single other
  characters, and decoding concatenates tokens, so in-vocabulary text round-trips exactly;
  an unknown word becomes <unk>.
- "bpe": byte-level BPE trained on the corpus (and the vocabulary words) up to `vocab_size`;
  any text round-trips exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import string
from typing import Iterable

import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
UNK = "<unk>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
DEFAULT_SYSTEM = "You are a helpful assistant."

_WORD_PATTERN = r"\w+|[^\w]"
_BASE_CHARS = tuple(sorted(set(string.printable) - set("\x0b\x0c")))


def qwen_chat_template(default_system: str | None = DEFAULT_SYSTEM) -> str:
  """The Qwen2.5-VL chat template; `default_system` is inserted when no system turn leads.

  Text parts are copied verbatim; each image part becomes
  `<|vision_start|><|image_pad|><|vision_end|>` (expanded to the image's token count later by
  the formatter); `add_generation_prompt=True` appends `<|im_start|>assistant\\n`.
  """
  if default_system is None:
    system = ""
  else:
    if "{" in default_system or "%" in default_system:
      raise ValueError(f"default_system must not contain '{{' or '%': {default_system!r}")
    system = (
        "{% if loop.first and message['role'] != 'system' %}"
        f"<|im_start|>system\n{default_system}<|im_end|>\n{{% endif %}}"
    )
  return (
      "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
      "{% for message in messages %}" + system
      + "<|im_start|>{{ message['role'] }}\n"
      "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
      "{% else %}{% for content in message['content'] %}"
      "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
      "{% set image_count.value = image_count.value + 1 %}"
      "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
      "<|vision_start|><|image_pad|><|vision_end|>"
      "{% elif content['type'] == 'video' or 'video' in content %}"
      "{% set video_count.value = video_count.value + 1 %}"
      "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
      "<|vision_start|><|video_pad|><|vision_end|>"
      "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
      "{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
  )


@dataclasses.dataclass(frozen=True)
class QwenTokenIds:
  """Ids of the special tokens that the formatter, the model and the sampler use."""

  pad: int
  eos: int
  im_start: int
  im_end: int
  vision_start: int
  vision_end: int
  image_pad: int
  video_pad: int


def qwen_token_ids(tokenizer: transformers.PreTrainedTokenizerBase) -> QwenTokenIds:
  """Looks the Qwen special tokens up by text; works for real Qwen2.5-VL tokenizers too."""
  vocab = tokenizer.get_vocab()
  missing = [t for t in SPECIAL_TOKENS if t not in vocab]
  if missing:
    raise ValueError(f"tokenizer lacks the Qwen special tokens {missing}.")
  if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
    raise ValueError(
        f"tokenizer needs a pad and an eos token, got pad={tokenizer.pad_token!r}, "
        f"eos={tokenizer.eos_token!r}."
    )
  return QwenTokenIds(
      pad=tokenizer.pad_token_id,
      eos=tokenizer.eos_token_id,
      im_start=vocab[IM_START],
      im_end=vocab[IM_END],
      vision_start=vocab[VISION_START],
      vision_end=vocab[VISION_END],
      image_pad=vocab[IMAGE_PAD],
      video_pad=vocab[VIDEO_PAD],
  )


def build_tokenizer(
    *,
    vocabulary: Iterable[str] = (),
    corpus: Iterable[str] = (),
    kind: str = "word",
    vocab_size: int = 1024,
    default_system: str | None = DEFAULT_SYSTEM,
    model_max_length: int = 4096,
    save_dir: str | None = None,
) -> transformers.PreTrainedTokenizerFast:
  """Builds a small tokenizer with the Qwen2.5-VL chat template and special tokens.

  Args:
    vocabulary: words to include ("word": each must be one \\w+ run or one character; order
      is kept, so ids are stable for a fixed vocabulary). "bpe": added to the training text.
    corpus: texts. "word": their words join the vocabulary (after `vocabulary`, in order of
      first appearance). "bpe": the training text.
    kind: "word" (WordLevel) or "bpe" (byte-level BPE).
    vocab_size: "bpe" only: the target vocabulary size (special tokens included).
    default_system: system prompt the template inserts when a conversation has none (as
      Qwen2.5-VL does), or None for no default; its words join the vocabulary.
    model_max_length: recorded in the tokenizer config.
    save_dir: if given, `save_pretrained` into this local directory.

  Returns:
    A `PreTrainedTokenizerFast` with eos `<|im_end|>`, pad `<|endoftext|>` and the chat
    template of `qwen_chat_template(default_system)`.
  """
  vocabulary, corpus = list(vocabulary), list(corpus)
  template_text = "system user assistant " + (default_system or "")
  if kind == "word":
    tokenizer = _word_level(vocabulary, corpus + [template_text])
  elif kind == "bpe":
    tokenizer = _byte_level_bpe(vocabulary + corpus + [template_text], vocab_size)
  else:
    raise ValueError(f"unknown tokenizer kind {kind!r}; known: bpe, word")
  wrapped = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer,
      eos_token=IM_END,
      pad_token=PAD,
      unk_token=UNK if kind == "word" else None,
      additional_special_tokens=list(SPECIAL_TOKENS[1:]),
      clean_up_tokenization_spaces=False,
      model_max_length=model_max_length,
  )
  wrapped.chat_template = qwen_chat_template(default_system)
  if save_dir is not None:
    wrapped.save_pretrained(save_dir)
  return wrapped


# tokenizer_config.json classes that mean "the tokenizer.json as it is" (what build_tokenizer
# saves). AutoTokenizer would replace them by the class of config.json's model type when the
# directory also holds a model (transformers 5: a qwen2 config.json makes it a Qwen2Tokenizer,
# which re-tokenizes with Qwen's pre-tokenizer), so they are loaded directly.
_GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase:
  """Loads a tokenizer saved with `save_pretrained` from a local directory (no hub access);
  a model checkpoint may share the directory."""
  config_file = os.path.join(path, "tokenizer_config.json")
  tokenizer_class = None
  if os.path.exists(config_file):
    with open(config_file, encoding="utf-8") as f:
      tokenizer_class = json.load(f).get("tokenizer_class")
  if tokenizer_class in _GENERIC_TOKENIZER_CLASSES:
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
  else:
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  if tokenizer.chat_template is None:
    raise ValueError(f"tokenizer in {path} has no chat template.")
  qwen_token_ids(tokenizer)  # raises naming the missing special tokens
  return tokenizer


def _word_level(vocabulary: list[str], corpus: list[str]) -> Tokenizer:
  pattern = re.compile(_WORD_PATTERN)
  for word in vocabulary:
    if pattern.fullmatch(word) is None:
      raise ValueError(
          f"vocabulary entry {word!r} is not one word (a \\w+ run) or one character; split it."
      )
  words = list(SPECIAL_TOKENS) + [UNK] + list(_BASE_CHARS) + vocabulary
  for text in corpus:
    words.extend(pattern.findall(text))
  vocab: dict[str, int] = {}
  for word in words:
    vocab.setdefault(word, len(vocab))
  tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
  tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="isolated")
  tokenizer.decoder = decoders.Fuse()
  return tokenizer


def _byte_level_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  tokenizer.train_from_iterator(texts, trainer=trainer)
  return tokenizer
