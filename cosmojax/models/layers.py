"""Building blocks of the Qwen2 / Qwen2.5-VL backbones in Flax NNX.

Every parameter carries logical axis names from `cosmojax.parallel.axes` as `out_sharding`
metadata (flax 0.12), with `eager_sharding=False` so that models build anywhere (no mesh
needed); `nnx.get_partition_spec(state)` under `flax.linen.logical_axis_rules(rules)` maps the
names to mesh axes. Parameters are stored in `param_dtype`; matmuls run in `dtype`; norms,
rotary embeddings and softmax run in float32 (as transformers does).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cosmojax.parallel import axes

# Score of a masked attention entry. Finite, so a fully masked row (a padding query) gives a
# uniform distribution instead of NaN.
MASK_VALUE = -1e30

Dtype = jnp.dtype | type


def _normal(key: jax.Array, shape: tuple[int, ...], stddev: float, dtype: Dtype) -> jax.Array:
  """Normal(0, stddev) draws. A concrete key seeds NumPy on the host: eager jax.random would
  compile one sampler per parameter shape (about a second per shape on CPU). A traced key
  (model built under jit) uses jax.random, which gives different, equally distributed values."""
  if isinstance(key, jax.core.Tracer):
    return (stddev * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
  seed = np.asarray(jax.random.key_data(key)).reshape(-1)
  draws = np.random.default_rng(seed).standard_normal(shape, np.float32) * np.float32(stddev)
  return jnp.asarray(draws, dtype=dtype)


def make_param(rngs: nnx.Rngs | None, shape: Sequence[int], logical_axes: Sequence[str | None],
               dtype: Dtype, init: str = "normal", stddev: float = 0.02) -> nnx.Param:
  """A parameter with logical-axis sharding metadata; init is "normal", "zeros" or "ones"."""
  if len(shape) != len(logical_axes):
    raise ValueError(f"shape {tuple(shape)} and axes {tuple(logical_axes)} differ in rank")
  if init == "normal":
    value = _normal(rngs.params(), tuple(shape), stddev, dtype)
  elif init in ("zeros", "ones"):  # host constants: no per-shape compilation
    value = jnp.asarray((np.zeros if init == "zeros" else np.ones)(tuple(shape), np.float32),
                        dtype=dtype)
  else:
    raise ValueError(f"unknown init {init!r}")
  return nnx.Param(value, out_sharding=tuple(logical_axes), eager_sharding=False)


def _quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": _quick_gelu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown hidden_act {name!r}; known: {', '.join(ACTIVATIONS)}") from None


class Dense(nnx.Module):
  """y = x . W + b contracting the last `len(in_shape)` dims of x; W is [*in_shape, *out_shape]."""

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int],
               kernel_axes: Sequence[str | None], *, use_bias: bool,
               bias_axes: Sequence[str | None] | None = None, stddev: float = 0.02,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs | None):
    self.n_in = len(in_shape)
    self.dtype = dtype
    self.kernel = make_param(rngs, (*in_shape, *out_shape), kernel_axes, param_dtype,
                             stddev=stddev)
    if use_bias:
      self.bias = make_param(rngs, tuple(out_shape), bias_axes, param_dtype, "zeros")
    else:
      self.bias = nnx.data(None)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.tensordot(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.n_in)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class RMSNorm(nnx.Module):
  """y = w * x / sqrt(mean(x^2) + eps), normalised in float32."""

  def __init__(self, dim: int, eps: float, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32):
    self.eps = eps
    self.dtype = dtype
    self.weight = make_param(None, (dim,), (axes.NORM,), param_dtype, "ones")

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (self.weight[...].astype(self.dtype) * x32.astype(self.dtype)).astype(self.dtype)


class Embed(nnx.Module):
  """Token embedding table [vocab, embed]; `matrix_t()` is its transpose for a tied LM head."""

  def __init__(self, vocab_size: int, dim: int, *, stddev: float = 0.02,
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               rngs: nnx.Rngs | None):
    self.dtype = dtype
    self.embedding = make_param(rngs, (vocab_size, dim), (axes.VOCAB, axes.EMBED), param_dtype,
                                stddev=stddev)

  def __call__(self, ids_bt: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids_bt, axis=0).astype(self.dtype)

  def matrix_t(self) -> jax.Array:
    return self.embedding[...].T  # [embed, vocab]


class GatedMLP(nnx.Module):
  """SwiGLU-style MLP: down(act(gate(x)) * up(x))."""

  def __init__(self, dim: int, hidden: int, act: str, *, use_bias: bool, embed_axis: str,
               mlp_axis: str, stddev: float = 0.02, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs | None):
    kw = dict(use_bias=use_bias, stddev=stddev, dtype=dtype, param_dtype=param_dtype,
              rngs=rngs)
    self.act = activation(act)
    self.gate = Dense((dim,), (hidden,), (embed_axis, mlp_axis), bias_axes=(mlp_axis,), **kw)
    self.up = Dense((dim,), (hidden,), (embed_axis, mlp_axis), bias_axes=(mlp_axis,), **kw)
    self.down = Dense((hidden,), (dim,), (mlp_axis, embed_axis), bias_axes=(embed_axis,), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(self.act(self.gate(x)) * self.up(x))


def rope_inv_freq(dim: int, theta: float) -> np.ndarray:
  """inv_freq[j] = theta^(-2j/dim), j < dim/2, float32 as transformers computes it."""
  exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
  return (1.0 / (np.float32(theta) ** exponent)).astype(np.float32)


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray,
                 mrope_section: Sequence[int] | None = None) -> tuple[jax.Array, jax.Array]:
  """cos/sin tables of (M-)RoPE.  # [batch, time, head_dim] each, float32

  1-D RoPE: positions [batch, time]; angle[b, t, j] = pos[b, t] * inv_freq[j].
  M-RoPE: positions [3, batch, time] (temporal, height, width); frequency j uses the position
  row of the section it falls in (`mrope_section` splits the head_dim/2 frequencies into
  t, h, w blocks). Both halves of the head share the angles: cos = [cos(a), cos(a)].
  """
  if mrope_section is None:
    pos_btj = positions[..., None].astype(jnp.float32)
  else:
    if positions.ndim == 2:
      positions = jnp.broadcast_to(positions[None], (3, *positions.shape))
    rows = np.repeat(np.arange(len(mrope_section)) % 3, mrope_section)  # [head_dim/2]
    pos_btj = jnp.moveaxis(positions[rows], 0, -1).astype(jnp.float32)
  angle = pos_btj * jnp.asarray(inv_freq)
  angle = jnp.concatenate([angle, angle], axis=-1)
  return jnp.cos(angle), jnp.sin(angle)


def rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x * cos + rotate_half(x) * sin in float32.

  x: [..., time, heads, head_dim]; cos, sin: [..., time, head_dim].
  """
  x32 = x.astype(jnp.float32)
  cos, sin = cos[..., None, :], sin[..., None, :]
  return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def dot_product_attention(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array,
                          mask_bts: jax.Array, scale: float) -> jax.Array:
  """Grouped-query attention.  # [batch, time, heads, head_dim]

  softmax_s(scale * q_t . k_s  where mask[t, s], else -inf) . v_s, with query head n reading
  key/value head n // (heads / kv_heads). Scores and softmax in float32. mask_bts is boolean
  and broadcastable to [batch, time, keys].
  """
  b, t, n, h = q_btnh.shape
  kv = k_bskh.shape[2]
  q = q_btnh.reshape(b, t, kv, n // kv, h)
  scores = jnp.einsum("btkgh,bskh->bkgts", q, k_bskh, preferred_element_type=jnp.float32)
  scores = jnp.where(mask_bts[:, None, None], scores * scale, MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_bskh.dtype)
  out = jnp.einsum("bkgts,bskh->btkgh", probs, v_bskh)
  return out.reshape(b, t, n, h)
