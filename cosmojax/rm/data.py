"""What reward models and judges read: formatted (prompt, response) token rows, in static-shape
batches.

A scored sequence is the prompt conversation rendered with the tokenizer's chat template and
the generation prompt, followed by the response and its closing `<|im_end|>`:

    <|im_start|>system ...<|im_end|>\\n<|im_start|>user\\n{prompt}<|im_end|>\\n
    <|im_start|>assistant\\n{response}<|im_end|>

The two parts are tokenized separately and concatenated (as a rollout's prompt and sampled
tokens are), so the response's tokens do not depend on the prompt, and the last token, where
`RewardModel.score` pools, is the response's `<|im_end|>`. Training and scoring format the
same way. A judge's prompt is the rendered conversation with the generation prompt and no
response.

Text only: image parts of the prompt messages are dropped (the verifier sees the
conversation's text), so examples with images score like their text. Rows longer than
`max_length` are cut on the left (the system prompt and the start of the conversation go
first), keeping the response and the end of the request.

Batches have `BatchSpec` shapes (a fixed batch size, the smallest length bucket that holds
the longest row); rows after the real ones are padding with an all-zero mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence, Union

import flax.struct
import jax
import numpy as np
import transformers

from cosmojax import types
from cosmojax.data import tokenizer as tokenizer_lib
from cosmojax.data.batching import BatchSpec

# A prompt: the text of one user turn, or chat messages (ending with a user turn).
Prompt = Union[str, Sequence[Mapping[str, Any]]]


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  """A preference: `chosen` is a better response to `prompt` than `rejected`.

  Attributes:
    prompt: a user turn's text, or chat messages ending with a user turn.
    chosen: the preferred response.
    rejected: the other response.
    margin: the reward gap the Bradley-Terry loss asks for (0: none).
  """

  prompt: Prompt
  chosen: str
  rejected: str
  margin: float = 0.0


@dataclasses.dataclass(frozen=True)
class LabeledResponse:
  """A response with a pointwise label in [0, 1] (1: good, 0: bad)."""

  prompt: Prompt
  response: str
  label: float


@flax.struct.dataclass
class PairwiseBatch:
  """Preference pairs, right-padded.

  Attributes:
    chosen_ids: [B, T] int32 tokens of the chosen sequences.
    chosen_mask: [B, T] int32, 1 on real tokens.
    rejected_ids: [B, T] int32 tokens of the rejected sequences.
    rejected_mask: [B, T] int32.
    margin: [B] float32 required reward gaps.
    pair_mask: [B] bool, False on padding pairs.
  """

  chosen_ids: jax.Array
  chosen_mask: jax.Array
  rejected_ids: jax.Array
  rejected_mask: jax.Array
  margin: jax.Array
  pair_mask: jax.Array


@flax.struct.dataclass
class PointwiseBatch:
  """Labeled responses, right-padded.

  Attributes:
    input_ids: [B, T] int32 tokens.
    attention_mask: [B, T] int32, 1 on real tokens.
    labels: [B] float32 in [0, 1].
    response_mask: [B, T] int32, 1 on the response's tokens (value models are trained on
      each of them).
    example_mask: [B] bool, False on padding rows.
  """

  input_ids: jax.Array
  attention_mask: jax.Array
  labels: jax.Array
  response_mask: jax.Array
  example_mask: jax.Array


def text_messages(prompt: Prompt) -> list[dict[str, str]]:
  """The prompt as chat messages with string contents; image parts are dropped."""
  if isinstance(prompt, str):
    return [types.text_message("user", prompt)]
  if not prompt:
    raise ValueError("prompt has no messages")
  messages = [types.text_message(m["role"], types.message_text(m)) for m in prompt]
  if messages[-1]["role"] != "user":
    raise ValueError(f"a scored prompt must end with a user turn; the last turn is "
                     f"{messages[-1]['role']!r}")
  return messages


class SequenceEncoder:
  """Tokenizes prompts and responses as verifiers see them (module docstring).

  Args:
    tokenizer: a tokenizer with a chat template and the Qwen special tokens.
    max_length: rows are cut on the left to this many tokens.
  """

  def __init__(self, tokenizer: transformers.PreTrainedTokenizerBase, max_length: int):
    if max_length < 2:
      raise ValueError(f"max_length must be at least 2; got {max_length}")
    self.tokenizer = tokenizer
    self.max_length = max_length
    self.pad_id = tokenizer_lib.qwen_token_ids(tokenizer).pad

  def _ids(self, texts: Sequence[str]) -> list[np.ndarray]:
    if not texts:
      return []
    encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [np.asarray(ids, np.int32) for ids in encoded]

  def prompts(self, prompts: Sequence[Prompt]) -> list[np.ndarray]:
    """Prompt rows with the generation prompt (what a judge reads).  # each [T] int32"""
    texts = [self.tokenizer.apply_chat_template(text_messages(p), tokenize=False,
                                                add_generation_prompt=True) for p in prompts]
    return [ids[-self.max_length:] for ids in self._ids(texts)]

  def sequences(self, prompts: Sequence[Prompt], responses: Sequence[str]
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids [T] int32, response_mask [T] bool) per (prompt, response) pair."""
    if len(prompts) != len(responses):
      raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    for i, response in enumerate(responses):
      if not isinstance(response, str):
        raise TypeError(f"response {i} is {type(response).__name__}, not str")
    texts = [self.tokenizer.apply_chat_template(text_messages(p), tokenize=False,
                                                add_generation_prompt=True) for p in prompts]
    out = []
    for prompt_ids, response_ids in zip(
        self._ids(texts), self._ids([r + tokenizer_lib.IM_END for r in responses])):
      ids = np.concatenate([prompt_ids, response_ids])
      mask = np.concatenate([np.zeros(len(prompt_ids), bool), np.ones(len(response_ids), bool)])
      out.append((ids[-self.max_length:], mask[-self.max_length:]))
    return out


def pad_rows(rows: Sequence[np.ndarray], batch_size: int, length: int, pad_value: Any, *,
             left: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Rows into a [batch_size, length] array padded with `pad_value`, and its int32 mask."""
  if len(rows) > batch_size:
    raise ValueError(f"{len(rows)} rows do not fit a batch of {batch_size}")
  dtype = rows[0].dtype if rows else np.int32
  out = np.full((batch_size, length), pad_value, dtype)
  mask = np.zeros((batch_size, length), np.int32)
  for i, row in enumerate(rows):
    if len(row) > length:
      raise ValueError(f"row {i} has {len(row)} tokens > batch length {length}")
    span = slice(length - len(row), length) if left else slice(0, len(row))
    out[i, span], mask[i, span] = row, 1
  return out, mask


def collate_pairs(chosen: Sequence[np.ndarray], rejected: Sequence[np.ndarray],
                  margins: Sequence[float], spec: BatchSpec, pad_id: int) -> PairwiseBatch:
  """Encoded pairs (ids rows) into a `PairwiseBatch` of `spec` shapes (host NumPy)."""
  if not 0 < len(chosen) == len(rejected) == len(margins):
    raise ValueError(f"need as many chosen ({len(chosen)}), rejected ({len(rejected)}) and "
                     f"margins ({len(margins)}), at least one")
  t = spec.length_bucket(max(len(r) for r in (*chosen, *rejected)))
  b = spec.batch_size
  chosen_ids, chosen_mask = pad_rows(chosen, b, t, pad_id)
  rejected_ids, rejected_mask = pad_rows(rejected, b, t, pad_id)
  margin = np.zeros(b, np.float32)
  margin[:len(margins)] = margins
  return PairwiseBatch(chosen_ids=chosen_ids, chosen_mask=chosen_mask,
                       rejected_ids=rejected_ids, rejected_mask=rejected_mask, margin=margin,
                       pair_mask=np.arange(b) < len(chosen))


def collate_pointwise(rows: Sequence[tuple[np.ndarray, np.ndarray]], labels: Sequence[float],
                      spec: BatchSpec, pad_id: int) -> PointwiseBatch:
  """Encoded (ids, response_mask) rows and labels into a `PointwiseBatch` (host NumPy)."""
  if not 0 < len(rows) == len(labels):
    raise ValueError(f"need as many rows ({len(rows)}) as labels ({len(labels)}), at least one")
  bad = [i for i, y in enumerate(labels) if not 0.0 <= float(y) <= 1.0]
  if bad:
    raise ValueError(f"labels must lie in [0, 1]; label {bad[0]} is {labels[bad[0]]!r}")
  t = spec.length_bucket(max(len(ids) for ids, _ in rows))
  b = spec.batch_size
  input_ids, attention_mask = pad_rows([ids for ids, _ in rows], b, t, pad_id)
  response_mask, _ = pad_rows([m.astype(np.int32) for _, m in rows], b, t, 0)
  y = np.zeros(b, np.float32)
  y[:len(labels)] = labels
  return PointwiseBatch(input_ids=input_ids, attention_mask=attention_mask, labels=y,
                        response_mask=response_mask, example_mask=np.arange(b) < len(rows))
