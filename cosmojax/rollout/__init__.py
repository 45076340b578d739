"""The sampler: jitted prefill + KV-cache decode, G samples per prompt, behind a small interface.

    engine = JaxRolloutEngine(model, pad_id=tok_ids.pad, mesh=mesh)
    rollout = engine.generate(prompt_batch, key, SamplingConfig(group_size=8, max_new_tokens=512,
                                                                eos_ids=(tok_ids.im_end,)))
    texts = decode_completions(rollout, tokenizer, eos_ids=(tok_ids.im_end,))   # host
    old_logp = engine.logprobs(rollout)           # [N, T_n] under the current parameters
    engine.update_params(nnx.split(model)[1])     # after a learner step

  base      `RolloutEngine` (generate / logprobs / update_params) and `SamplingConfig`
  engine    `JaxRolloutEngine`, the pure `generate_rollout` / `score_rollout`
  sampling  temperature, top-k / top-p filtering, stop sequences (pure jnp)
  scoring   `completion_logprobs`, `per_sample_image_embeds` (pure jnp)
  text      `decode_completions`, `stop_token_sequences` (host)
"""

from cosmojax.rollout.base import RolloutEngine, SamplingConfig
from cosmojax.rollout.engine import (DEFAULT_COMPLETION_BUCKETS, DecodeSpec, JaxRolloutEngine,
                                     PreparedPrompts, generate_rollout, score_rollout)
from cosmojax.rollout.sampling import filter_logits, sample_tokens
from cosmojax.rollout.scoring import completion_logprobs, per_sample_image_embeds
from cosmojax.rollout.text import decode_completions, stop_token_sequences

__all__ = [
    "DEFAULT_COMPLETION_BUCKETS", "DecodeSpec", "JaxRolloutEngine", "PreparedPrompts",
    "RolloutEngine", "SamplingConfig", "completion_logprobs", "decode_completions",
    "filter_logits", "generate_rollout", "per_sample_image_embeds", "sample_tokens",
    "score_rollout", "stop_token_sequences",
]
