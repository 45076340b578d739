"""Shared fixtures of the inference tests: one engine for the whole session, so that each
generate shape compiles once.

Shapes: prompt batches of BATCH rows padded to LENGTH tokens; steps of STEP_TOKENS tokens;
one-shot greedy references of ONESHOT_TOKENS tokens. Sampled tests use `SAMPLED_STEP` (the
same delimiters, so the same compiled sampler for one sample per row and for K per row);
greedy tests use the `greedy_step` fixture.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from cosmojax import inference, rollout, types
from tests import common

BATCH, LENGTH, STEP_TOKENS, ONESHOT_TOKENS = 4, 64, 4, 12
SAMPLED_STEP = inference.StepConfig(delimiters=("\n",), final_delimiters=("</answer>",),
                                    max_step_tokens=STEP_TOKENS, max_steps=3)


@pytest.fixture(scope="session")
def tokenizer():
  return common.inference_tokenizer()


@pytest.fixture(scope="session")
def engine():
  return rollout.JaxRolloutEngine(common.inference_policy(), pad_id=0,
                                  completion_buckets=(STEP_TOKENS, 16),
                                  suppressed_ids=common.inference_suppressed_ids())


@pytest.fixture(scope="session")
def prompts(tokenizer):
  return inference.PromptBuilder.create(tokenizer, batch_size=BATCH, length_buckets=(LENGTH,))


@pytest.fixture(scope="session")
def examples():
  return common.inference_examples()


def prompt_ids(tokenizer, example) -> list[int]:
  """The chat prompt's token ids, rendered and encoded here (not by the code under test)."""
  text = tokenizer.apply_chat_template([dict(m) for m in example.messages], tokenize=False,
                                       add_generation_prompt=True)
  return tokenizer.encode(text, add_special_tokens=False)


def hand_batch(rows: list[list[int]], patch_dim: int) -> types.PromptBatch:
  """A left-padded PromptBatch of BATCH rows x LENGTH tokens built from token rows."""
  ids = np.zeros((BATCH, LENGTH), np.int32)
  mask = np.zeros((BATCH, LENGTH), np.int32)
  for i, row in enumerate(rows):
    ids[i, LENGTH - len(row):] = row
    mask[i, LENGTH - len(row):] = 1
  return types.PromptBatch(input_ids=ids, attention_mask=mask,
                           pixel_values=np.zeros((0, patch_dim), np.float32),
                           image_grid_thw=np.zeros((0, 3), np.int32),
                           task_ids=np.zeros(BATCH, np.int32),
                           example_mask=np.arange(BATCH) < len(rows))


@pytest.fixture(scope="session")
def oneshot_greedy(engine, prompts, tokenizer, examples) -> list[list[int]]:
  """Greedy completions (ONESHOT_TOKENS tokens, stopped only by <|im_end|>) of each example,
  in one uninterrupted KV-cache decode."""
  batch = hand_batch([prompt_ids(tokenizer, e) for e in examples],
                     prompts.formatter.image_processor.patch_dim)
  config = rollout.SamplingConfig(greedy=True, max_new_tokens=ONESHOT_TOKENS, eos_ids=(2,))
  out = engine.generate(batch, jax.random.key(0), config)
  tokens, lengths = np.asarray(out.completion_tokens), np.asarray(out.lengths)
  return [[int(t) for t in tokens[i, :lengths[i]]] for i in range(len(examples))]


@pytest.fixture(scope="session")
def greedy_step(oneshot_greedy, tokenizer) -> inference.StepConfig:
  """Greedy steps whose delimiter is the text of the third greedy token of example 0, so that
  at least one step ends at a delimiter rather than at the step budget."""
  delimiter = tokenizer.decode([oneshot_greedy[0][2]])
  return inference.StepConfig(delimiters=(delimiter,), final_delimiters=("</answer>",),
                              max_step_tokens=STEP_TOKENS, max_steps=3, greedy=True)


@pytest.fixture(scope="session")
def value_model():
  return common.tiny_reward_model(common.inference_vocab_size(), seed=5, value=True)


@pytest.fixture(scope="session")
def reward_model():
  return common.tiny_reward_model(common.inference_vocab_size(), seed=3)


@nnx.jit
def _token_scores(model, ids, mask):
  return model.token_scores(ids, mask)


def direct_scores(model, rows: list[list[int]]) -> np.ndarray:
  """The head of a reward/value model at the last token of each token row, computed here
  from `token_scores` on rows right-padded to LENGTH (one compilation per model)."""
  ids = np.zeros((len(rows), LENGTH), np.int32)
  mask = np.zeros((len(rows), LENGTH), np.int32)
  for i, row in enumerate(rows):
    ids[i, :len(row)], mask[i, :len(row)] = row, 1
  values = np.asarray(_token_scores(model, ids, mask))
  return np.array([values[i, len(row) - 1] for i, row in enumerate(rows)])
