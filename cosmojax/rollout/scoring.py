"""Log-probabilities of given completions, and per-sample image embeddings from per-prompt ones.

`completion_logprobs` is the one place where hidden states become token log-probs for the
learner; the fused kernel (kernels/) replaces it later with the same contract.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from cosmojax.rollout.sampling import suppress


def completion_logprobs(hidden_ntd: jax.Array, lm_head_dv: jax.Array, targets_nt: jax.Array,
                        temperature: float | jax.Array = 1.0,
                        suppressed_ids: Sequence[int] = ()) -> jax.Array:
  """log softmax(h_t . W / temperature)[y_t], float32, the suppressed ids' logits at -inf.

  hidden [N, T, D] at the positions that predict targets [N, T]; W the LM head [D, V].
  Returns [N, T] float32.
  """
  logits_ntv = jnp.einsum("ntd,dv->ntv", hidden_ntd.astype(jnp.float32),
                          lm_head_dv.astype(jnp.float32), preferred_element_type=jnp.float32)
  logits_ntv = suppress(logits_ntv, suppressed_ids) / temperature
  logp_ntv = jax.nn.log_softmax(logits_ntv, axis=-1)
  targets = targets_nt.astype(jnp.int32)[..., None]
  return jnp.take_along_axis(logp_ntv, targets, axis=-1)[..., 0]


def per_sample_image_embeds(prompt_embeds_md: jax.Array, prompt_ids_bt: jax.Array,
                            group_size: int, image_token_id: int) -> jax.Array:
  """Image embeddings of a batch of N = B * G samples from those of its B prompts.

  Qwen2.5-VL fills the k-th image placeholder of the flattened batch with row k of
  `image_embeds`. The prompts' placeholders take rows 0.. of `prompt_embeds` (the vision
  tower's output, once per prompt); in the sample batch, prompt b's c_b rows come G times in
  a row (samples b*G .. b*G + G - 1). Output row r of prompt b's block
  [G o_b, G (o_b + c_b)) (o_b = c_0 + ... + c_{b-1}) is prompt row o_b + (r - G o_b) mod c_b.
  Rows after G * sum(c) are filler (no placeholder reads them).

  Args:
    prompt_embeds_md: [M, D] `encode_images` output of the prompt batch.
    prompt_ids_bt: [B, T_p] prompt token ids.
    group_size: G.
    image_token_id: the placeholder id.

  Returns:
    [G * M, D] embeddings for the sample batch's placeholders.
  """
  m = prompt_embeds_md.shape[0]
  counts_b = jnp.sum(prompt_ids_bt == image_token_id, axis=1).astype(jnp.int32)
  ends_b = jnp.cumsum(counts_b)
  starts_b = ends_b - counts_b
  r = jnp.arange(group_size * m, dtype=jnp.int32)
  b = jnp.searchsorted(group_size * ends_b, r, side="right")
  b = jnp.minimum(b, counts_b.shape[0] - 1)
  within = (r - group_size * starts_b[b]) % jnp.maximum(counts_b[b], 1)
  rows = jnp.clip(starts_b[b] + within, 0, m - 1)
  return prompt_embeds_md[rows]
