"""Reward and value heads on any `CausalLM` backbone (Qwen2 text or Qwen2.5-VL).

A head is one linear map from the backbone's final hidden state (after the last norm) to a
scalar, applied in float32:

    s[b, t] = h[b, t] . w + c                       # token_scores  [batch, time]

- `RewardModel.score` pools it at the last real token of each row,
  r[b] = s[b, last(b)] with last(b) = max{t : attention_mask[b, t] = 1}, which is the same
  token whether the row is padded on the left or on the right (a row without real tokens
  reads position 0, and its score means nothing). Sequences are formatted so that this
  token is the response's closing `<|im_end|>` (`cosmojax.rm.data`).
- `ValueModel` has the same parameters; its `__call__` returns the per-token values
  V[b, t] = s[b, t] (0 on padding), the value of the prefix ending at token t, which
  value-model-guided intervention reads at reasoning-step boundaries. Its `score` is the
  value of the whole sequence, so a value model serves as a reward model too.

Checkpoint layout (a directory; no pickle anywhere):

    config.json, model.safetensors (or shards + index)   the backbone (`save_pretrained`)
    reward_head.safetensors                              the head:
        "score.weight"  float32 [1, hidden]   (PyTorch Linear layout: [out, in])
        "score.bias"    float32 [1]
        metadata: {"kind": "reward" | "value", "pooling": "last_token",
                   "hidden_size": str(hidden)}

`save_reward_model` writes it and `load_reward_model` reads it back; a missing, corrupt or
mismatched head file raises `CheckpointError` naming the file.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from cosmojax.models.checkpoint import CheckpointError, from_pretrained, save_pretrained
from cosmojax.models.layers import Dense
from cosmojax.models.qwen2 import CausalLM
from cosmojax.parallel import axes

HEAD_FILE = "reward_head.safetensors"
POOLING = "last_token"
_WEIGHT, _BIAS = "score.weight", "score.bias"


def last_token_index(attention_mask: jax.Array) -> jax.Array:
  """Index of each row's last real token (left or right padding); 0 for an empty row.

  # [batch] int32
  """
  t = attention_mask.shape[-1]
  index = jnp.max(jnp.where(attention_mask > 0, jnp.arange(t), -1), axis=-1)
  return jnp.maximum(index, 0).astype(jnp.int32)


def gather_last(x_bt: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """x[b, last(b)] for x [batch, time, ...].  # [batch, ...]"""
  index = last_token_index(attention_mask)
  return jnp.take_along_axis(x_bt, index.reshape((-1,) + (1,) * (x_bt.ndim - 1)), axis=1)[:, 0]


class RewardModel(nnx.Module):
  """A backbone plus a scalar head pooled at the last real token (module docstring).

  Args:
    backbone: a `CausalLM` (`Qwen2ForCausalLM`, `Qwen2_5_VL`); its LM head stays but is unused.
    rngs: initialises the head, normal(0, stddev) weights and a zero bias.
    stddev: head init scale; default the backbone's `initializer_range`.
  """

  kind = "reward"

  def __init__(self, backbone: CausalLM, *, rngs: nnx.Rngs | None = None,
               stddev: float | None = None):
    self.backbone = backbone
    hidden = backbone.text.hidden_size
    self.head = Dense((hidden,), (1,), (axes.EMBED, None), use_bias=True, bias_axes=(None,),
                      stddev=backbone.text.initializer_range if stddev is None else stddev,
                      dtype=jnp.float32, param_dtype=jnp.float32,
                      rngs=rngs if rngs is not None else nnx.Rngs(0))

  @property
  def hidden_size(self) -> int:
    return self.backbone.text.hidden_size

  def token_scores(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                   **backbone_kwargs: Any) -> jax.Array:
    """The head on every position, float32.  # [batch, time]

    `backbone_kwargs` go to the backbone's `hidden_states` (position_ids, pixel_values,
    image_grid_thw, image_embeds, vision_meta, as the backbone accepts them).
    """
    h = self.backbone.hidden_states(input_ids, attention_mask, **backbone_kwargs)
    return self.head(h.astype(jnp.float32))[..., 0]

  def score(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
            **backbone_kwargs: Any) -> jax.Array:
    """The head at each row's last real token, float32.  # [batch]"""
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    h = self.backbone.hidden_states(input_ids, attention_mask, **backbone_kwargs)
    return self.head(gather_last(h, attention_mask).astype(jnp.float32))[..., 0]

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               **backbone_kwargs: Any) -> jax.Array:
    """Sequence rewards.  # [batch]"""
    return self.score(input_ids, attention_mask, **backbone_kwargs)


class ValueModel(RewardModel):
  """Per-token values V[b, t] of each prefix; `score` gives the whole sequence's value."""

  kind = "value"

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               **backbone_kwargs: Any) -> jax.Array:
    """Per-token values, 0 on padding.  # [batch, time]"""
    values = self.token_scores(input_ids, attention_mask, **backbone_kwargs)
    if attention_mask is None:
      return values
    return jnp.where(attention_mask > 0, values, 0.0)


HEAD_KINDS: dict[str, type[RewardModel]] = {"reward": RewardModel, "value": ValueModel}


def save_reward_model(model: RewardModel, path: str) -> None:
  """Writes the backbone (`save_pretrained`) and `reward_head.safetensors` into `path`."""
  save_pretrained(model.backbone, path)
  weight = np.asarray(model.head.kernel[...], np.float32).T  # [1, hidden]
  bias = np.asarray(model.head.bias[...], np.float32)  # [1]
  metadata = {"kind": model.kind, "pooling": POOLING, "hidden_size": str(model.hidden_size)}
  save_file({_WEIGHT: np.ascontiguousarray(weight), _BIAS: bias},
            os.path.join(path, HEAD_FILE), metadata=metadata)


def _read_head(file: str, hidden: int) -> tuple[str, np.ndarray, np.ndarray]:
  """(kind, weight [1, hidden], bias [1]) of a head file; CheckpointError naming it."""
  try:
    with safe_open(file, framework="numpy") as f:
      metadata = f.metadata() or {}
      names = set(f.keys())
      missing = {_WEIGHT, _BIAS} - names
      if missing or names - {_WEIGHT, _BIAS}:
        raise CheckpointError(f"{file}: expected tensors {[_WEIGHT, _BIAS]}; found "
                              f"{sorted(names)}")
      weight, bias = f.get_tensor(_WEIGHT), f.get_tensor(_BIAS)
  except (SafetensorError, OSError) as e:
    raise CheckpointError(f"{file}: cannot read safetensors file ({e})") from None
  kind = metadata.get("kind")
  if kind not in HEAD_KINDS:
    raise CheckpointError(f"{file}: metadata 'kind' is {kind!r}; expected one of "
                          f"{sorted(HEAD_KINDS)}")
  if metadata.get("pooling", POOLING) != POOLING:
    raise CheckpointError(f"{file}: metadata 'pooling' is {metadata['pooling']!r}; only "
                          f"{POOLING!r} is supported")
  if weight.shape != (1, hidden) or bias.shape != (1,):
    raise CheckpointError(f"{file}: {_WEIGHT} has shape {list(weight.shape)} and {_BIAS} "
                          f"{list(bias.shape)}; the backbone's hidden size {hidden} implies "
                          f"[1, {hidden}] and [1]")
  return kind, weight, bias


def load_reward_model(path: str, dtype: Any = jnp.float32,
                      param_dtype: Any = None) -> RewardModel:
  """Loads a directory written by `save_reward_model`: a `RewardModel` or a `ValueModel`
  (by the head file's `kind`). The head is float32 whatever the backbone's dtype."""
  file = os.path.join(path, HEAD_FILE)
  if not os.path.exists(file):
    raise CheckpointError(f"{file}: file not found (a reward model directory holds the "
                          f"backbone checkpoint and {HEAD_FILE})")
  backbone = from_pretrained(path, dtype=dtype, param_dtype=param_dtype)
  kind, weight, bias = _read_head(file, backbone.text.hidden_size)
  model = HEAD_KINDS[kind](backbone, rngs=nnx.Rngs(0))
  model.head.kernel.set_value(jnp.asarray(weight.T, jnp.float32))
  model.head.bias.set_value(jnp.asarray(bias, jnp.float32))
  return model
