"""Batched, jitted scoring with a reward model.

    scorer = RewardScorer(load_reward_model(path), load_tokenizer(path))
    rewards = scorer(prompts, responses, batch_size=8)   # [N] float64

Rows are formatted as in training (`cosmojax.rm.data`), sorted by length, cut into batches of
`batch_size` rows and padded to the smallest length bucket that holds each batch, so a
scorer compiles once per bucket it meets; scores come back in the input order.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
import transformers
from flax import nnx

from cosmojax.data.batching import BatchSpec
from cosmojax.models.heads import RewardModel
from cosmojax.rm import data as data_lib

DEFAULT_LENGTH_BUCKETS = (256, 512, 1024, 2048, 4096)

# (state, input_ids [B, T], attention_mask [B, T]) -> [B] float32
RowFn = Callable[[nnx.State, jax.Array, jax.Array], jax.Array]


def run_batched(fn: RowFn, state: nnx.State, rows: Sequence[np.ndarray], spec: BatchSpec,
                pad_id: int, *, left: bool) -> np.ndarray:
  """fn over `rows` in `spec`-shaped batches (length-sorted); [len(rows)] float64 in order."""
  out = np.zeros(len(rows), np.float64)
  order = np.argsort([len(r) for r in rows], kind="stable")
  for start in range(0, len(rows), spec.batch_size):
    idx = order[start:start + spec.batch_size]
    chunk = [rows[i] for i in idx]
    length = spec.length_bucket(max(len(r) for r in chunk))
    ids, mask = data_lib.pad_rows(chunk, spec.batch_size, length, pad_id, left=left)
    out[idx] = np.asarray(fn(state, ids, mask))[:len(idx)]
  return out


class RewardScorer:
  """Jitted batched rewards `score(prompt, response)` of a `RewardModel` (or `ValueModel`).

  Args:
    model: the reward model (split once; its state is kept here).
    tokenizer: its tokenizer, with a chat template.
  """

  def __init__(self, model: RewardModel, tokenizer: transformers.PreTrainedTokenizerBase):
    if not isinstance(model, RewardModel):
      raise TypeError(f"RewardScorer needs a RewardModel; got {type(model).__name__}")
    self.graphdef, self.state = nnx.split(model)
    self.tokenizer = tokenizer
    graphdef = self.graphdef
    self._score = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state).score(ids, mask))

  def score_rows(self, rows: Sequence[np.ndarray], spec: BatchSpec, pad_id: int) -> np.ndarray:
    """Scores of encoded token rows.  # [N] float64"""
    return run_batched(self._score, self.state, rows, spec, pad_id, left=False)

  def __call__(self, prompts: Sequence[data_lib.Prompt], responses: Sequence[str], *,
               batch_size: int = 8,
               length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS) -> np.ndarray:
    """Rewards of the responses to the prompts (raw head outputs).  # [N] float64"""
    spec = BatchSpec(batch_size, tuple(length_buckets))
    encoder = data_lib.SequenceEncoder(self.tokenizer, spec.max_length)
    rows = [ids for ids, _ in encoder.sequences(prompts, responses)]
    return self.score_rows(rows, spec, encoder.pad_id)


def pairwise_accuracy(scorer: RewardScorer, pairs: Sequence[data_lib.PreferencePair], *,
                      batch_size: int = 8,
                      length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS
                      ) -> dict[str, float]:
  """Held-out metrics of preference pairs: `accuracy` = mean [r_chosen > r_rejected],
  `margin` = mean (r_chosen - r_rejected)."""
  if not pairs:
    raise ValueError("no pairs to evaluate")
  kw = dict(batch_size=batch_size, length_buckets=length_buckets)
  chosen = scorer([p.prompt for p in pairs], [p.chosen for p in pairs], **kw)
  rejected = scorer([p.prompt for p in pairs], [p.rejected for p in pairs], **kw)
  return {"accuracy": float(np.mean(chosen > rejected)),
          "margin": float(np.mean(chosen - rejected))}
