"""Name and layout maps between Hugging Face tensors and the NNX parameters of our models.

A `TensorMap` ties one HF tensor to one or more of our parameters (the vision `qkv` tensor
splits into q, k and v) with the expected HF shape and the two layout conversions. HF linear
weights are [out, in]; ours are [in, *out] kernels with heads split out ([embed, heads,
head_dim]), so conversions transpose and reshape. Canonical HF names are those transformers
5.23 writes (`model.layers.*`, `visual.*`, `lm_head.*`); `ALIASES` rewrite the other naming
scheme transformers also loads (`model.language_model.*`, `model.visual.*`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from cosmojax.models.configs import Qwen2_5_VLConfig, TextConfig

Path = tuple  # a parameter path in the flat NNX state, e.g. ("decoder", "norm", "weight")
Shapes = dict  # Path -> shape of our parameter

QWEN2_5_VL_ALIASES = (("model.language_model.", "model."), ("model.visual.", "visual."))


@dataclasses.dataclass(frozen=True)
class TensorMap:
  hf_name: str
  paths: tuple[Path, ...]
  hf_shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
  to_hf: Callable[[Sequence[np.ndarray]], np.ndarray]


def _linear(hf: str, path: Path, shapes: Shapes, n_in: int = 1) -> TensorMap:
  """HF [out, in] <-> ours [*in_shape, *out_shape] (in_shape = first n_in dims)."""
  shape = tuple(shapes[path])
  d_in, d_out = math.prod(shape[:n_in]), math.prod(shape[n_in:])
  return TensorMap(hf, (path,), (d_out, d_in), lambda w: (w.T.reshape(shape),),
                   lambda ps: ps[0].reshape(d_in, d_out).T)


def _vector(hf: str, path: Path, shapes: Shapes) -> TensorMap:
  """HF [n] <-> ours of any shape with n elements (biases split per head)."""
  shape = tuple(shapes[path])
  n = math.prod(shape)
  return TensorMap(hf, (path,), (n,), lambda w: (w.reshape(shape),),
                   lambda ps: ps[0].reshape(n))


def _copy(hf: str, path: Path, shapes: Shapes) -> TensorMap:
  shape = tuple(shapes[path])
  return TensorMap(hf, (path,), shape, lambda w: (w,), lambda ps: ps[0])


def _fused_qkv(hf: str, paths: tuple[Path, Path, Path], shapes: Shapes, bias: bool) -> TensorMap:
  """HF fused [3 * d, (d)] (q rows, then k, then v) <-> our three q, k, v params."""
  shape = tuple(shapes[paths[0]])
  if bias:
    n = math.prod(shape)
    return TensorMap(hf, paths, (3 * n,),
                     lambda w: tuple(p.reshape(shape) for p in np.split(w, 3)),
                     lambda ps: np.concatenate([p.reshape(-1) for p in ps]))
  d_in, d_out = shape[0], math.prod(shape[1:])
  return TensorMap(hf, paths, (3 * d_out, d_in),
                   lambda w: tuple(p.T.reshape(shape) for p in np.split(w, 3)),
                   lambda ps: np.concatenate([p.reshape(d_in, d_out).T for p in ps]))


def _decoder_maps(c: TextConfig, shapes: Shapes) -> list[TensorMap]:
  maps = [_copy("model.embed_tokens.weight", ("decoder", "embed", "embedding"), shapes),
          _copy("model.norm.weight", ("decoder", "norm", "weight"), shapes)]
  for i in range(c.num_layers):
    hf, our = f"model.layers.{i}.", ("decoder", "layers", i)
    maps += [
        _copy(hf + "input_layernorm.weight", (*our, "input_norm", "weight"), shapes),
        _copy(hf + "post_attention_layernorm.weight", (*our, "post_norm", "weight"), shapes),
        _linear(hf + "self_attn.o_proj.weight", (*our, "attn", "o", "kernel"), shapes, n_in=2),
    ]
    for name in "qkv":
      maps += [
          _linear(hf + f"self_attn.{name}_proj.weight", (*our, "attn", name, "kernel"), shapes),
          _vector(hf + f"self_attn.{name}_proj.bias", (*our, "attn", name, "bias"), shapes),
      ]
    for name in ("gate", "up", "down"):
      maps.append(_linear(hf + f"mlp.{name}_proj.weight", (*our, "mlp", name, "kernel"), shapes))
  if not c.tie_word_embeddings:
    maps.append(_linear("lm_head.weight", ("lm_head", "kernel"), shapes))
  return maps


def qwen2_maps(c: TextConfig, shapes: Shapes) -> list[TensorMap]:
  return _decoder_maps(c, shapes)


def qwen2_5_vl_maps(c: Qwen2_5_VLConfig, shapes: Shapes) -> list[TensorMap]:
  v = c.vision
  patch = ("visual", "patch_embed", "kernel")
  conv_shape = (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
  maps = _decoder_maps(c.text, shapes) + [
      TensorMap("visual.patch_embed.proj.weight", (patch,), conv_shape,
                lambda w: (w.reshape(w.shape[0], -1).T,),
                lambda ps: ps[0].T.reshape(conv_shape)),
      _copy("visual.merger.ln_q.weight", ("visual", "merger", "norm", "weight"), shapes),
  ]
  for hf_i, ours in (("0", "fc1"), ("2", "fc2")):
    maps += [_linear(f"visual.merger.mlp.{hf_i}.weight", ("visual", "merger", ours, "kernel"),
                     shapes),
             _vector(f"visual.merger.mlp.{hf_i}.bias", ("visual", "merger", ours, "bias"),
                     shapes)]
  for i in range(v.depth):
    hf, our = f"visual.blocks.{i}.", ("visual", "blocks", i)
    attn = (*our, "attn")
    maps += [
        _copy(hf + "norm1.weight", (*our, "norm1", "weight"), shapes),
        _copy(hf + "norm2.weight", (*our, "norm2", "weight"), shapes),
        _fused_qkv(hf + "attn.qkv.weight", tuple((*attn, n, "kernel") for n in "qkv"), shapes,
                   bias=False),
        _fused_qkv(hf + "attn.qkv.bias", tuple((*attn, n, "bias") for n in "qkv"), shapes,
                   bias=True),
        _linear(hf + "attn.proj.weight", (*attn, "proj", "kernel"), shapes, n_in=2),
        _vector(hf + "attn.proj.bias", (*attn, "proj", "bias"), shapes),
    ]
    for name in ("gate", "up", "down"):
      maps += [_linear(hf + f"mlp.{name}_proj.weight", (*our, "mlp", name, "kernel"), shapes),
               _vector(hf + f"mlp.{name}_proj.bias", (*our, "mlp", name, "bias"), shapes)]
  return maps
