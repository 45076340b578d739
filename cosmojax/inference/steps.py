"""Step segmentation: reasoning generated one step at a time from (prompt, partial response).

A step is what the policy generates after the current partial response, until

  - the step contains a delimiter (`StepConfig.delimiters`: strings such as "\\n\\n" or ". ",
    or token-id sequences such as a special step token)           -> ending "delimiter"
  - or a final delimiter (`final_delimiters`, e.g. "</answer>")   -> "final": the response
    is complete
  - or an end-of-sequence token (`eos_ids`)                      -> "eos": complete; the
    token is not part of the step
  - or `max_step_tokens` tokens                                  -> "budget"

The delimiter is part of the step. Delimiters are matched twice: on device, as the token
sequences that each delimiter string encodes to alone (`SamplingConfig.stop_sequences`), which
stops generation early; and on the host, in the decoded text of the step's token prefixes, so
that a delimiter the model spelled with other tokens (glued to a word, a merged "\\n\\n"
token) also ends the step: the step is cut after the first token whose prefix contains a
delimiter, and the tokens after it are dropped (they are regenerated from the cut). A
delimiter is looked for inside one step's text only, never across a step boundary.

Continuation (re-prefill): a partial response is kept as token ids, and the next step is
generated from a prompt batch whose rows are the example's chat prompt (ending with the
generation prompt) followed by the response's tokens (`PromptBuilder`). Generated tokens are
kept as sampled (no re-tokenization); text inserted by the driver (a corrective prefix, a
human edit) is tokenized alone and appended. The KV cache is not reused across steps: every
step re-prefills prompt + partial response. Reuse would need the engine to hand caches back
and forth, to gather cache rows when beams fork or die, and to prefill the inserted text of
interventions and edits into a cache in the middle of a response; none of that fits the
pure, static-shape `RolloutEngine.generate(batch, key, config)` interface that external
engines implement too (and those usually cache prefixes themselves). The cost: one forward
pass over prompt + partial response per step (parallel over its tokens, unlike decoding), so
the prefill compute of a response grows with the square of its number of steps; with many
short steps of a long response it can dominate, and a cache-reusing engine would remove it.
The vision tower likewise re-encodes an example's images at every step.

Static shapes: rows are collated into batches of `BatchSpec.batch_size` rows (padding rows
generate nothing) and left-padded to the smallest length bucket that holds the prompt plus
the response, so generation compiles once per (length bucket, samples per row).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, Union

import jax
import numpy as np

from cosmojax import types
from cosmojax.data.batching import BatchSpec, Collator
from cosmojax.data.formatting import ChatFormatter, FormattedExample
from cosmojax.data.image_processing import ImageProcessor
from cosmojax.data.tokenizer import qwen_token_ids
from cosmojax.rollout.base import RolloutEngine, SamplingConfig
from cosmojax.rollout.text import stop_token_sequences

ENDINGS = ("delimiter", "final", "eos", "budget")
DEFAULT_LENGTH_BUCKETS = (256, 512, 1024, 2048, 4096)

# A delimiter: a string (matched in the decoded text) or a token-id sequence.
Delimiter = Union[str, tuple[int, ...]]


def _delimiters(values: Sequence[Any], name: str) -> tuple[Delimiter, ...]:
  out = []
  for i, d in enumerate(values):
    if isinstance(d, str):
      if not d:
        raise ValueError(f"StepConfig.{name}[{i}] is an empty string.")
      out.append(d)
    else:
      seq = tuple(int(t) for t in d)
      if not seq or min(seq) < 0:
        raise ValueError(f"StepConfig.{name}[{i}] = {d!r}: a token delimiter must be a "
                         "non-empty sequence of token ids >= 0.")
      out.append(seq)
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """How reasoning is cut into steps and how each step is sampled.

  Attributes:
    delimiters: strings or token-id sequences that end a step (module docstring).
    final_delimiters: strings or token-id sequences that end a step and the response.
    max_step_tokens: the token budget of one step (a completion bucket of the engine must
      hold it).
    max_steps: the most steps of a response.
    temperature, top_k, top_p, greedy: sampling of each step (`SamplingConfig`).
    eos_ids: tokens that end the response; None: the tokenizer's `<|im_end|>` and pad.
  """

  delimiters: tuple[Delimiter, ...] = ("\n\n",)
  final_delimiters: tuple[Delimiter, ...] = ("</answer>",)
  max_step_tokens: int = 64
  max_steps: int = 16
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  greedy: bool = False
  eos_ids: tuple[int, ...] | None = None

  def __post_init__(self):
    object.__setattr__(self, "delimiters", _delimiters(self.delimiters, "delimiters"))
    object.__setattr__(self, "final_delimiters",
                       _delimiters(self.final_delimiters, "final_delimiters"))
    if self.max_step_tokens < 1 or self.max_steps < 1:
      raise ValueError(f"StepConfig: max_step_tokens ({self.max_step_tokens}) and max_steps "
                       f"({self.max_steps}) must be >= 1.")
    if self.eos_ids is not None:
      object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))
    SamplingConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                   greedy=self.greedy)  # validates the sampling fields

  def end_ids(self, tokenizer: Any) -> tuple[int, ...]:
    """The end-of-sequence ids: `eos_ids`, or the tokenizer's `<|im_end|>` and pad."""
    if self.eos_ids is not None:
      return self.eos_ids
    ids = qwen_token_ids(tokenizer)
    return tuple(dict.fromkeys((ids.im_end, ids.pad)))

  def sampling(self, tokenizer: Any, group_size: int) -> SamplingConfig:
    """The engine's sampling config of one step, `group_size` samples per row."""
    delimiters = self.delimiters + self.final_delimiters
    strings = [d for d in delimiters if isinstance(d, str)]
    stops = stop_token_sequences(tokenizer, strings) + tuple(
        d for d in delimiters if not isinstance(d, str))
    return SamplingConfig(group_size=group_size, max_new_tokens=self.max_step_tokens,
                          temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                          greedy=self.greedy, eos_ids=self.end_ids(tokenizer),
                          stop_sequences=tuple(dict.fromkeys(stops)))


@dataclasses.dataclass(frozen=True)
class StepSample:
  """A generated step before scoring: its tokens, text and ending (`ENDINGS`)."""

  token_ids: tuple[int, ...]
  text: str
  ending: str


def _contains(ids: Sequence[int], text: str, delimiter: Delimiter) -> bool:
  if isinstance(delimiter, str):
    return delimiter in text
  n = len(delimiter)
  return any(tuple(ids[i:i + n]) == delimiter for i in range(len(ids) - n + 1))


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
  """Text of token ids, special tokens skipped."""
  return tokenizer.decode(list(ids), skip_special_tokens=True)


def split_step(ids: Sequence[int], tokenizer: Any, config: StepConfig,
               eos_ids: Sequence[int]) -> StepSample:
  """A generated completion as a step: cut after its first delimiter (module docstring)."""
  ids = [int(i) for i in ids]
  eos = bool(ids) and ids[-1] in set(eos_ids)
  if eos:
    ids = ids[:-1]
  delimiters = config.delimiters + config.final_delimiters
  found = lambda n: any(_contains(ids[:n], decode(tokenizer, ids[:n]), d) for d in delimiters)
  if delimiters and found(len(ids)):
    lo, hi = 1, len(ids)  # the smallest n with found(n): found is monotone in n
    while lo < hi:
      mid = (lo + hi) // 2
      lo, hi = (lo, mid) if found(mid) else (mid + 1, hi)
    ids = ids[:lo]
    text = decode(tokenizer, ids)
    final = any(_contains(ids, text, d) for d in config.final_delimiters)
    return StepSample(tuple(ids), text, "final" if final else "delimiter")
  return StepSample(tuple(ids), decode(tokenizer, ids), "eos" if eos else "budget")


def edited_step(text: str, tokenizer: Any, config: StepConfig) -> StepSample:
  """A step written as text (a human edit): tokenized alone; it ends the response when it
  holds a final delimiter."""
  ids = tuple(int(i) for i in tokenizer.encode(text, add_special_tokens=False))
  final = any(_contains(ids, text, d) for d in config.final_delimiters)
  return StepSample(ids, text, "final" if final else "delimiter")


class PromptBuilder:
  """Prompt batches of (example, partial response) rows for `RolloutEngine.generate`.

  A row is the example's prompt formatted by `formatter` (chat template, generation prompt,
  image placeholders and patches) followed by the partial response's token ids.

  Args:
    formatter: formats prompts; its `max_length` bounds the prompt alone.
    spec: rows per batch, length buckets of prompt + response (the largest bounds them),
      patch buckets and image slots of a batch of rows.
  """

  def __init__(self, formatter: ChatFormatter, spec: BatchSpec):
    if formatter.max_length > spec.max_length:
      raise ValueError(f"PromptBuilder: formatter max_length {formatter.max_length} exceeds "
                       f"the largest length bucket {spec.max_length}.")
    self.formatter = formatter
    self.spec = spec

  @classmethod
  def create(cls, tokenizer: Any, *, batch_size: int = 8,
             length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
             image_processor: ImageProcessor | None = None, max_images_per_example: int = 0,
             max_prompt_length: int | None = None) -> "PromptBuilder":
    """A builder from a tokenizer: text-only rows unless `max_images_per_example` > 0 (then
    patch buckets that always fit `batch_size` rows of images, `BatchSpec.for_images`)."""
    processor = image_processor or ImageProcessor()
    spec = BatchSpec.for_images(batch_size, tuple(length_buckets), processor,
                                max_images_per_example)
    formatter = ChatFormatter(tokenizer, processor,
                              max_length=max_prompt_length or spec.max_length,
                              max_images_per_example=max_images_per_example)
    return cls(formatter, spec)

  @property
  def tokenizer(self) -> Any:
    return self.formatter.tokenizer

  def format(self, examples: Sequence[types.Example]) -> list[FormattedExample]:
    """The formatted prompt of each example; ValueError naming one the formatter drops."""
    out = []
    for example in examples:
      item = self.formatter.prompt(example)
      if item is None:
        raise ValueError(f"Example {example.id!r}: its prompt was dropped by the formatter "
                         f"({self.formatter.drops.summary()}).")
      out.append(item)
    return out

  def room(self, prompt: FormattedExample) -> int:
    """How many response tokens fit after `prompt` in the largest length bucket."""
    return self.spec.max_length - prompt.length

  def batches(self, prompts: Sequence[FormattedExample], responses: Sequence[Sequence[int]]
              ) -> list[tuple[types.PromptBatch, int]]:
    """(prompt batch, number of real rows) for the rows (prompt i + response i), in order."""
    if len(prompts) != len(responses):
      raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows = [dataclasses.replace(
        p, input_ids=np.concatenate([p.input_ids, np.asarray(r, np.int32)]).astype(np.int32),
        attention_mask=np.ones(p.length + len(r), np.int32),
        loss_mask=np.zeros(p.length + len(r), np.int32)) for p, r in zip(prompts, responses)]
    tasks = sorted({p.example.task for p in prompts})
    collator = Collator.for_formatter(self.spec, self.formatter, tasks)
    size = self.spec.batch_size
    return [(collator.prompts(rows[i:i + size])[0], len(rows[i:i + size]))
            for i in range(0, len(rows), size)]


def generate_steps(engine: RolloutEngine, builder: PromptBuilder,
                   prompts: Sequence[FormattedExample], responses: Sequence[Sequence[int]],
                   config: StepConfig, num_samples: int, key: jax.Array
                   ) -> list[list[StepSample]]:
  """`num_samples` next steps of every row (prompt i + partial response i).

  One `engine.generate` call per batch of rows (batch c uses `fold_in(key, c)`), with
  group_size = num_samples.

  Returns:
    Per row, its `num_samples` steps (sample g of row i is sample i * G + g of the batch).
  """
  tokenizer = builder.tokenizer
  sampling = config.sampling(tokenizer, num_samples)
  out: list[list[StepSample]] = []
  for c, (batch, n) in enumerate(builder.batches(prompts, responses)):
    rollout = engine.generate(batch, jax.random.fold_in(key, c), sampling)
    tokens = np.asarray(rollout.completion_tokens)
    lengths = np.asarray(rollout.lengths)
    for row in range(n):
      samples = range(row * num_samples, (row + 1) * num_samples)
      out.append([split_step(tokens[s, :lengths[s]], tokenizer, config, sampling.eos_ids)
                  for s in samples])
  return out
