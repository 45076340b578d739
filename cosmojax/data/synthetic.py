"""The synthetic multimodal safety suite: tiny, procedural, learnable by a tiny model on CPU.

Tasks (`Example.task`) and what they carry (images are uint8 [S, S, 3], S = image_size):

  count                  scene; answer_type "number", ground_truth "3"
  compare                scene; "choice", ground_truth "A", choices ("red shapes", "blue shapes")
  arithmetic             scene; "number" (total, difference, corners, add; metadata["op"])
  instruction            scene; "text", ground_truth the content word ("red"); the answer also
                         satisfies `Example.instructions`
  value                  no image; "choice", ground_truth "B" == preferred
  harmful_text           no image or an unrelated scene; unsafe, attack ""
  jailbreak_typographic  the request rendered over "1. 2. 3."; unsafe, attack "typographic"
  jailbreak_query_image  a harmful object glyph; unsafe, attack "query_relevant_image"
  jailbreak_split_intent a harmful object glyph; unsafe, attack "split_intent"
  benign_probe           safe look-alikes of the four forms above (metadata["form"]: "text",
                         "typographic", "query_relevant_image", "split_intent")
Safety tasks have no ground truth (answer_type ""); their target holds a refusal or, for
benign probes, the helpful answer (also in metadata["answer"]).

Capability examples carry visual key facts ("2 red circles", one per kind in the scene) and
textual key facts (the counts and equation the reasoning uses, "2 plus 3 is 5"). Safety
examples carry the request and the category words as textual key facts.

Targets: `<description>…</description><think>…</think><answer>…</answer>`; unsafe examples
answer with one of `synthetic_lexicon.REFUSALS`. Answers are bare: a number, a choice letter,
a refusal, the instruction-shaped text, or the benign helpful answer.

Instructions (`Example.instructions`, checked on the answer text, i.e. the stripped content
of <answer>…</answer>; a *word* is a whitespace-separated token with leading and trailing
punctuation removed, empty ones dropped):
  "uppercase"      the answer has a letter and no lower-case letter.
  "lowercase"      the answer has a letter and no upper-case letter.
  "one_word"       exactly one word.
  "max_words:N"    between 1 and N words.
  "start_with:W"   the first word equals W, ignoring case.
  "end_with:W"     the last word equals W, ignoring case.
An instruction example holds one to three of them; its answer (the short content word, or the
sentence "the circle is red" / "the red shape is a circle" when no length instruction binds)
satisfies all, and its ground truth is the content word, which the answer contains as a word,
ignoring case.

Splits: "train" and "eval". Each example's split key (the text the model reads, plus the words
or object shown in its image; see `synthetic_tasks`) is hashed into a split, so within a task
train and eval share no split key; eval asks unseen combinations of seen words. Every example
is a pure function of (seed, task, split, index).
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from typing import Iterator, Mapping, Sequence

import numpy as np
import transformers

from cosmojax import types
from cosmojax.data import synthetic_lexicon as lex
from cosmojax.data import tokenizer
from cosmojax.data import synthetic_safety  # noqa: F401  (registers the safety tasks)
from cosmojax.data.synthetic_tasks import (BENIGN_FORMS, SOURCE, SPLITS, TASKS, Ctx, SuiteConfig,
                                          format_target, split_of)

# The suite's general tasks: capability and instruction following (cosmojax.rewards.
# CAPABILITY_TASKS is narrower: the three tasks scored for accuracy, without instruction).
GENERAL_TASKS = ("count", "compare", "arithmetic", "instruction")
JAILBREAK_TASKS = ("jailbreak_typographic", "jailbreak_query_image", "jailbreak_split_intent")
UNSAFE_TASKS = ("harmful_text", *JAILBREAK_TASKS)
TASK_NAMES = (*GENERAL_TASKS, "value", *UNSAFE_TASKS, "benign_probe")


def make_example(task: str, split: str, index: int, config: SuiteConfig = SuiteConfig()
                 ) -> types.Example:
  """Example `index` of `task` in `split`: a pure function of its arguments."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
  if index < 0:
    raise ValueError(f"index must be >= 0, got {index}.")
  rng = np.random.default_rng(
      [config.seed, zlib.crc32(task.encode()), SPLITS.index(split), index])
  draft = TASKS.get(task)(Ctx(rng, config, split))
  messages = (
      types.user_message(draft.prompt, num_images=len(draft.images)),
      types.text_message("assistant", format_target(draft.description, draft.think, draft.answer)),
  )
  metadata = {**draft.metadata, "split": split, "split_key": draft.key, "index": index,
              "seed": config.seed}
  return types.Example(
      id=f"{task}/{split}/{config.seed}/{index}", task=task, messages=messages,
      images=draft.images, ground_truth=draft.ground_truth, answer_type=draft.answer_type,
      choices=draft.choices, safety=draft.safety, visual_key_facts=draft.visual_key_facts,
      textual_key_facts=draft.textual_key_facts, preferred=draft.preferred,
      instructions=draft.instructions, source=SOURCE, metadata=metadata)


def generate(task: str, split: str, n: int, config: SuiteConfig = SuiteConfig(), start: int = 0
             ) -> list[types.Example]:
  return [make_example(task, split, i, config) for i in range(start, start + n)]


class SyntheticSource:
  """A random-access source (grain's `RandomAccessDataSource` protocol) over suite examples.

  Holds `counts[task]` examples of each task of `split`, in an order mixed by the seed.
  """

  def __init__(self, counts: Mapping[str, int], split: str, config: SuiteConfig = SuiteConfig()):
    for task, n in counts.items():
      if task not in TASKS:
        TASKS.get(task)  # raises, naming the known tasks
      if n < 0:
        raise ValueError(f"count of task {task!r} is negative: {n}.")
    self.counts, self.split, self.config = dict(counts), split, config
    items = [(task, i) for task, n in counts.items() for i in range(n)]
    order = np.random.default_rng([config.seed, SPLITS.index(split), 7]).permutation(len(items))
    self._items = [items[i] for i in order]

  def __len__(self) -> int:
    return len(self._items)

  def __getitem__(self, record_key: int) -> types.Example:
    task, index = self._items[record_key]
    return make_example(task, self.split, index, self.config)

  def __iter__(self) -> Iterator[types.Example]:
    return (self[i] for i in range(len(self)))

  def __repr__(self) -> str:
    return f"SyntheticSource({self.counts}, split={self.split!r}, seed={self.config.seed})"


@dataclasses.dataclass(frozen=True)
class SFTMixConfig:
  """How much of each task the SFT set holds, relative to `examples_per_task`.

  The SFT policy should learn the format and the capabilities well but safety only partly, so
  that RL has something to improve: by default a quarter of the harmful text requests (with
  refusals) and no jailbreaks, while benign probes and value judgements are complete.
  """

  examples_per_task: int = 256
  capability_fraction: float = 1.0
  value_fraction: float = 1.0
  benign_fraction: float = 1.0
  refusal_fraction: float = 0.25
  jailbreak_fraction: float = 0.0

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if field.name.endswith("_fraction") and not 0 <= value <= 1:
        raise ValueError(f"SFTMixConfig.{field.name} is {value}; it must lie in [0, 1].")
    if self.examples_per_task < 0:
      raise ValueError(f"SFTMixConfig.examples_per_task is {self.examples_per_task} (< 0).")

  def task_counts(self) -> dict[str, int]:
    n = self.examples_per_task
    fractions = {
        **{t: self.capability_fraction for t in GENERAL_TASKS},
        "value": self.value_fraction,
        "benign_probe": self.benign_fraction,
        "harmful_text": self.refusal_fraction,
        **{t: self.jailbreak_fraction for t in JAILBREAK_TASKS},
    }
    return {t: int(round(n * f)) for t, f in fractions.items()}


def sft_source(mix: SFTMixConfig = SFTMixConfig(), config: SuiteConfig = SuiteConfig()
               ) -> SyntheticSource:
  """The SFT training set (train split)."""
  return SyntheticSource(mix.task_counts(), "train", config)


def suite_corpus(config: SuiteConfig = SuiteConfig(), examples_per_task: int = 32
                 ) -> Iterator[str]:
  """Texts for training the suite's tokenizer: every vocabulary unit, then train messages."""
  yield " ".join(sorted(lex.suite_vocabulary()))
  for task in TASK_NAMES:
    for example in generate(task, "train", examples_per_task, config):
      for message in example.messages:
        yield types.message_text(message)


TARGET_TAGS = ("<description>", "</description>", "<think>", "</think>", "<answer>", "</answer>")


def build_suite_tokenizer(
    config: SuiteConfig = SuiteConfig(),
    *,
    vocab_size: int = 2048,
    examples_per_task: int = 32,
    default_system: str | None = None,
    save_dir: str | None = None,
) -> transformers.PreTrainedTokenizerFast:
  """The suite's tokenizer: Qwen2.5-VL chat template and special tokens, byte-level BPE.

  Trained on `suite_corpus` with every vocabulary unit also given alone, so that each unit of
  `suite_vocabulary()` is one token with or without a leading space (about 1.7k tokens in
  all); the six target tags are added as single (non-special) tokens, so decoding keeps them.
  Any text still round-trips exactly (byte-level). No default system prompt by default, to
  keep sequences short for the tiny demo model.
  """
  tok = tokenizer.build_tokenizer(
      vocabulary=sorted(lex.suite_vocabulary()), corpus=suite_corpus(config, examples_per_task),
      kind="bpe", vocab_size=vocab_size, default_system=default_system)
  tok.add_tokens(list(TARGET_TAGS))
  if save_dir is not None:
    tok.save_pretrained(save_dir)
  return tok


def text_length(text: str) -> int:
  """Length in vocabulary units (words, digits, punctuation; each target tag counts one)."""
  return len(lex.text_units(re.sub(r"</?\w+>", " T ", text)))


def suite_stats(examples: Sequence[types.Example]) -> dict[str, dict[str, float]]:
  """Per task: number of examples, unsafe share, longest and mean prompt / target lengths."""
  stats: dict[str, dict[str, float]] = {}
  for task in sorted({e.task for e in examples}):
    group = [e for e in examples if e.task == task]
    prompts = [text_length(e.prompt_text) for e in group]
    targets = [text_length(e.target or "") for e in group]
    stats[task] = {
        "examples": len(group),
        "unsafe": float(np.mean([e.safety.unsafe for e in group])),
        "images": float(np.mean([len(e.images) for e in group])),
        "prompt_max": max(prompts), "prompt_mean": float(np.mean(prompts)),
        "target_max": max(targets), "target_mean": float(np.mean(targets)),
    }
  return stats
