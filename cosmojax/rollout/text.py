"""Host-side text helpers of the rollout engine: stop strings to token sequences, and
completions to strings (for reward functions and logs)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cosmojax import types


def stop_token_sequences(tokenizer: Any, stop_strings: Sequence[str]
                         ) -> tuple[tuple[int, ...], ...]:
  """The token ids of each stop string encoded alone, for `SamplingConfig.stop_sequences`.

  The device matches these exact token sequences at the end of a completion. A string that
  the model spells with other tokens (another BPE segmentation, or glued to the previous
  word) is not caught on device; `decode_completions` still cuts the text at it.
  """
  out = []
  for s in stop_strings:
    ids = tuple(int(i) for i in tokenizer.encode(s, add_special_tokens=False))
    if not ids:
      raise ValueError(f"stop string {s!r} encodes to no tokens.")
    out.append(ids)
  return tuple(out)


def decode_completions(rollout: types.Rollout, tokenizer: Any, *, eos_ids: Sequence[int] = (),
                       stop_strings: Sequence[str] = (),
                       skip_special_tokens: bool = True) -> list[str]:
  """The completion text of every sample (N strings; "" for padding prompts' samples).

  Each completion's `lengths[n]` tokens are decoded without a final EOS token (one of
  `eos_ids`), then cut before the first occurrence of any stop string (the stop string is
  not part of the text).
  """
  tokens = np.asarray(rollout.completion_tokens)
  lengths = np.asarray(rollout.lengths)
  sample_mask = np.asarray(rollout.sample_mask)
  eos = set(int(i) for i in eos_ids)
  texts = []
  for row, length, keep in zip(tokens, lengths, sample_mask):
    ids = [int(i) for i in row[:int(length)]] if keep else []
    if ids and ids[-1] in eos:
      ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    cuts = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    texts.append(text[:min(cuts)] if cuts else text)
  return texts
