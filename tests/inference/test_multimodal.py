"""Step-wise generation from image prompts (a tiny random Qwen2.5-VL)."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from flax import nnx

from cosmojax import inference, models, rollout
from tests import common


def test_image_prompts_continue_step_by_step_as_one_decode():
  """Re-prefilling image prompt + partial response (M-RoPE positions recomputed over the
  image and the response) reproduces one uninterrupted greedy decode."""
  tokenizer = common.tiny_tokenizer()
  config = common.tiny_vl_model_config()
  config = dataclasses.replace(
      config, text=dataclasses.replace(config.text, initializer_range=common.TINY_INIT_RANGE),
      vision=dataclasses.replace(config.vision, initializer_range=common.TINY_INIT_RANGE))
  suppressed = (0, 1, 3, 4, 5, 6, 7) + tuple(range(len(tokenizer), config.text.vocab_size))
  engine = rollout.JaxRolloutEngine(models.Qwen2_5_VL(config, rngs=nnx.Rngs(0)), pad_id=0,
                                    completion_buckets=(4, 8), suppressed_ids=suppressed)
  prompts = inference.PromptBuilder.create(tokenizer, batch_size=2, length_buckets=(64,),
                                           image_processor=common.tiny_image_processor(),
                                           max_images_per_example=1)
  examples = common.tiny_examples("count", 2, num_images=1)
  step = inference.StepConfig(delimiters=(), final_delimiters=(), max_step_tokens=4,
                              max_steps=2, greedy=True)
  results = inference.deliberate(engine, prompts, examples,
                                 inference.InterventionConfig(step, threshold=-math.inf), None,
                                 jax.random.key(0))
  (batch, n), = prompts.batches(prompts.format(examples), [[], []])
  assert n == 2 and int(np.sum(batch.image_grid_thw[:, 0] > 0)) == 2
  once = engine.generate(batch, jax.random.key(0), rollout.SamplingConfig(
      greedy=True, max_new_tokens=8, eos_ids=step.end_ids(tokenizer)))
  tokens, lengths = np.asarray(once.completion_tokens), np.asarray(once.lengths)
  for i, result in enumerate(results):
    reference = [int(t) for t in tokens[i, :lengths[i]]]
    assert list(result.token_ids) == reference[:len(result.token_ids)]
    assert len(result.steps) == 2 or result.stop_reason == "eos"
    assert len(result.token_ids) == min(8, len(reference)) - (result.stop_reason == "eos")
