"""Host text helpers: completions to strings, stop strings to token sequences."""

from __future__ import annotations

import numpy as np
import pytest

from cosmojax import rollout, types
from tests import common


def _rollout(completions, sample_mask, prompt_len=2):
  n, tn = len(completions), max(map(len, completions)) + 2
  comp = np.zeros((n, tn), np.int32)
  for i, c in enumerate(completions):
    comp[i, :len(c)] = c
  lengths = np.array([len(c) for c in completions], np.int32)
  completion_mask = (np.arange(tn)[None] < lengths[:, None]).astype(np.int32)
  t = prompt_len + tn
  return types.Rollout(
      tokens=np.concatenate([np.full((n, prompt_len), 9, np.int32), comp], axis=1),
      attention_mask=np.concatenate([np.ones((n, prompt_len), np.int32), completion_mask], 1),
      completion_mask=completion_mask, logprobs=np.zeros((n, tn), np.float32),
      position_ids=np.zeros((3, n, t), np.int32), prompt_index=np.arange(n, dtype=np.int32),
      sample_index=np.zeros(n, np.int32), lengths=lengths, truncated=np.zeros(n, bool),
      task_ids=np.zeros(n, np.int32), sample_mask=np.asarray(sample_mask))


def test_decode_completions_cuts_at_eos_and_stop_strings():
  tok = common.tiny_tokenizer()
  ids = lambda s: tok.encode(s, add_special_tokens=False)
  im_end = tok.convert_tokens_to_ids("<|im_end|>")
  completions = [ids("The answer is red") + [im_end],  # ends with EOS: dropped
                 ids("I think two. Answer: three"),  # cut before the stop string
                 ids("no") + [im_end] + ids("yes"),  # an EOS inside (special): skipped
                 ids("yes")]  # a padding prompt's sample: ""
  r = _rollout(completions, [True, True, True, False])
  texts = rollout.decode_completions(r, tok, eos_ids=(im_end,), stop_strings=("Answer:",))
  assert texts == ["The answer is red", "I think two. ", "noyes", ""]
  # Without skipping special tokens, only the final EOS is dropped.
  raw = rollout.decode_completions(r, tok, eos_ids=(im_end,), skip_special_tokens=False)
  assert raw[2] == "no<|im_end|>yes" and raw[0] == "The answer is red"


def test_stop_token_sequences_encode_each_string_alone():
  tok = common.tiny_tokenizer()
  vocab = tok.get_vocab()
  assert rollout.stop_token_sequences(tok, ["Answer:", "\n\n"]) == (
      (vocab["Answer"], vocab[":"]), (vocab["\n"], vocab["\n"]))
  with pytest.raises(ValueError, match="no tokens"):
    rollout.stop_token_sequences(tok, [""])
