"""Hugging Face checkpoints on local disk: `from_pretrained` and `save_pretrained`.

A checkpoint directory holds `config.json` and either `model.safetensors` or a sharded
`model.safetensors.index.json` with its shards. Only safetensors are read (never pickle). The
architecture is chosen from config.json (`architectures`, then `model_type`) through the
`MODEL_FAMILIES` registry. Loading is strict: a missing tensor, an unexpected tensor, a shape
that does not fit config.json, or an unreadable file raises `CheckpointError` naming it.
Parameters are built abstractly (`nnx.eval_shape`) and filled tensor by tensor, so no random
initialisation runs and the checkpoint is read once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from cosmojax.models import configs as cfg
from cosmojax.models import weight_maps as wm
from cosmojax.models.qwen2 import Qwen2ForCausalLM
from cosmojax.models.qwen2_5_vl import Qwen2_5_VL
from cosmojax.registry import Registry

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
  """A checkpoint that cannot be loaded; the message names the file / tensor / field."""


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """How to build, configure and name the weights of one architecture."""

  architecture: str  # the HF `architectures` entry written on save
  model_cls: type
  config_from_hf: Callable[[dict], Any]
  config_to_hf: Callable[[Any], dict]
  weight_maps: Callable[[Any, dict], list[wm.TensorMap]]
  aliases: tuple[tuple[str, str], ...] = ()  # (other HF name prefix, canonical prefix)


MODEL_FAMILIES = Registry[ModelFamily]("model family")

MODEL_FAMILIES.register("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl")(ModelFamily(
    architecture="Qwen2_5_VLForConditionalGeneration", model_cls=Qwen2_5_VL,
    config_from_hf=cfg.qwen2_5_vl_config_from_hf, config_to_hf=cfg.qwen2_5_vl_config_to_hf,
    weight_maps=wm.qwen2_5_vl_maps, aliases=wm.QWEN2_5_VL_ALIASES))
MODEL_FAMILIES.register("Qwen2ForCausalLM", "qwen2")(ModelFamily(
    architecture="Qwen2ForCausalLM", model_cls=Qwen2ForCausalLM,
    config_from_hf=cfg.text_config_from_hf, config_to_hf=cfg.qwen2_config_to_hf,
    weight_maps=wm.qwen2_maps))


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise CheckpointError(f"{path}: file not found") from None
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: invalid JSON ({e})") from None


def family_of(hf_config: dict, where: str = CONFIG_FILE) -> ModelFamily:
  """The registered family of an HF config dict (by `architectures`, then `model_type`)."""
  for name in [*(hf_config.get("architectures") or []), hf_config.get("model_type")]:
    if name in MODEL_FAMILIES:
      return MODEL_FAMILIES.get(name)
  raise CheckpointError(
      f"{where}: unsupported architecture (architectures={hf_config.get('architectures')}, "
      f"model_type={hf_config.get('model_type')!r}); known: {', '.join(MODEL_FAMILIES.names())}")


def load_config(path: str) -> Any:
  """The model config of a local Hugging Face directory (its config.json), without weights."""
  where = os.path.join(path, CONFIG_FILE)
  hf_config = _read_json(where)
  return family_of(hf_config, where).config_from_hf(hf_config)


def _family_of_model(model: nnx.Module) -> ModelFamily:
  for name in MODEL_FAMILIES.names():
    family = MODEL_FAMILIES.get(name)
    if type(model) is family.model_cls:
      return family
  raise CheckpointError(f"no model family is registered for {type(model).__name__}")


def _tensor_files(path: str) -> dict[str, str]:
  """Tensor name -> safetensors file, from the index or the single file's header."""
  index_path = os.path.join(path, INDEX_FILE)
  if os.path.exists(index_path):
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict):
      raise CheckpointError(f"{index_path}: missing field 'weight_map'")
    files = {name: os.path.join(path, f) for name, f in weight_map.items()}
    for f in sorted(set(files.values())):
      if not os.path.exists(f):
        raise CheckpointError(f"{index_path}: shard {os.path.basename(f)} not found")
    return files
  single = os.path.join(path, SINGLE_FILE)
  if not os.path.exists(single):
    raise CheckpointError(f"{path}: neither {SINGLE_FILE} nor {INDEX_FILE} found "
                          "(only safetensors checkpoints are supported)")
  with contextlib.ExitStack() as stack:
    return {name: single for name in _open(single, stack).keys()}


def _open(file: str, stack: contextlib.ExitStack):
  try:
    return stack.enter_context(safe_open(file, framework="numpy"))
  except (SafetensorError, OSError) as e:
    raise CheckpointError(f"{file}: cannot read safetensors file ({e})") from None


def _canonical(files: dict[str, str], family: ModelFamily) -> dict[str, tuple[str, str]]:
  """Canonical HF name -> (name in the file, file); rewrites the aliased naming scheme."""
  out: dict[str, tuple[str, str]] = {}
  for name, file in files.items():
    canon = name
    for prefix, target in family.aliases:
      if name.startswith(prefix):
        canon = target + name[len(prefix):]
        break
    if canon in out:
      raise CheckpointError(f"tensor {name!r} and {out[canon][0]!r} are the same weight "
                            f"({canon!r}) under two naming schemes")
    out[canon] = (name, file)
  return out


def _check_names(tensors: dict, maps: list[wm.TensorMap], path: str, tied: bool) -> None:
  expected = {m.hf_name for m in maps}
  extra = set(tensors) - expected - ({"lm_head.weight"} if tied else set())
  missing = expected - set(tensors)
  if missing:
    raise CheckpointError(f"{path}: missing tensor(s) {sorted(missing)[:8]}"
                          f"{' ...' if len(missing) > 8 else ''} ({len(missing)} missing)")
  if extra:
    names = sorted(tensors[n][0] for n in extra)
    raise CheckpointError(f"{path}: unexpected tensor(s) {names[:8]}"
                          f"{' ...' if len(names) > 8 else ''} in {tensors[min(extra)][1]}")


def _get(handles: dict, stack: contextlib.ExitStack, name: str, file: str) -> np.ndarray:
  if file not in handles:
    handles[file] = _open(file, stack)
  try:
    return handles[file].get_tensor(name)
  except (SafetensorError, OSError) as e:
    raise CheckpointError(f"{file}: cannot read tensor {name!r} ({e})") from None


def from_pretrained(path: str, dtype: Any = jnp.float32, param_dtype: Any = None) -> nnx.Module:
  """Loads a local HF checkpoint directory into the matching NNX model.

  Args:
    path: directory with config.json and safetensors weights.
    dtype: compute dtype of the model.
    param_dtype: dtype parameters are stored in (default: dtype).

  Returns:
    The model (e.g. `Qwen2_5_VL` or `Qwen2ForCausalLM`), with `model.config` set.
  """
  config_path = os.path.join(path, CONFIG_FILE)
  hf_config = _read_json(config_path)
  family = family_of(hf_config, config_path)
  try:
    config = family.config_from_hf(hf_config)
  except cfg.ConfigError as e:
    raise CheckpointError(f"{config_path}: {e}") from None
  param_dtype = param_dtype or dtype
  abstract = nnx.eval_shape(lambda: family.model_cls(config, dtype=dtype,
                                                     param_dtype=param_dtype, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  flat = dict(nnx.to_flat_state(state))
  maps = family.weight_maps(config, {p: v.get_value().shape for p, v in flat.items()})
  tensors = _canonical(_tensor_files(path), family)
  text = config.text if hasattr(config, "text") else config
  _check_names(tensors, maps, path, text.tie_word_embeddings)
  values: dict[tuple, Any] = {}
  with contextlib.ExitStack() as stack:
    handles: dict = {}
    for m in maps:
      name, file = tensors[m.hf_name]
      w = _get(handles, stack, name, file)
      if tuple(w.shape) != m.hf_shape:
        raise CheckpointError(f"{file}: tensor {name!r} has shape {list(w.shape)}, config.json "
                              f"implies {list(m.hf_shape)}")
      for p, arr in zip(m.paths, m.to_ours(w)):
        values[p] = jnp.asarray(arr, dtype=param_dtype)
    if text.tie_word_embeddings and "lm_head.weight" in tensors:
      name, file = tensors["lm_head.weight"]
      embed = values[("decoder", "embed", "embedding")]
      if not np.array_equal(_get(handles, stack, name, file), np.asarray(embed)):
        raise CheckpointError(f"{file}: tensor {name!r} differs from the embedding although "
                              "tie_word_embeddings is true")
  unfilled = set(flat) - set(values)
  if unfilled:  # a bug in the family's weight maps, not in the checkpoint
    raise RuntimeError(f"{family.architecture}: parameters without a tensor map {sorted(unfilled)}")
  new_state = nnx.from_flat_state([(p, v.replace(values[p])) for p, v in flat.items()])
  return nnx.merge(graphdef, new_state)


def _shards(tensors: dict[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, arr in tensors.items():
    if shards[-1] and size + arr.nbytes > max_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = arr
    size += arr.nbytes
  return shards


def save_pretrained(model: nnx.Module, path: str, max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes config.json and safetensors weights that transformers (5.23) and vLLM load.

  Tensor names are the ones transformers 5.23 writes; tied LM heads are not written. Weights
  above `max_shard_bytes` are split into `model-0000i-of-0000n.safetensors` shards with a
  `model.safetensors.index.json`.
  """
  family = _family_of_model(model)
  state = nnx.state(model, nnx.Param)
  flat = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}
  maps = family.weight_maps(model.config, {p: a.shape for p, a in flat.items()})
  tensors = {m.hf_name: np.ascontiguousarray(m.to_hf([flat[p] for p in m.paths])) for m in maps}
  dtypes = {str(a.dtype) for a in tensors.values()}
  hf_config = {**family.config_to_hf(model.config), "dtype": dtypes.pop() if len(dtypes) == 1
               else "float32"}
  os.makedirs(path, exist_ok=True)
  for f in os.listdir(path):  # weights of an earlier save would shadow or mix with these
    if f in (SINGLE_FILE, INDEX_FILE) or re.fullmatch(r"model-\d+-of-\d+\.safetensors", f):
      os.remove(os.path.join(path, f))
  with open(os.path.join(path, CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  shards = _shards(tensors, max_shard_bytes)
  metadata = {"format": "pt"}  # transformers expects the PyTorch format marker
  if len(shards) == 1:
    save_file(shards[0], os.path.join(path, SINGLE_FILE), metadata=metadata)
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, os.path.join(path, name), metadata=metadata)
    weight_map.update({t: name for t in shard})
  index = {"metadata": {"total_size": int(sum(math.prod(a.shape) * a.itemsize
                                              for a in tensors.values()))},
           "weight_map": weight_map}
  with open(os.path.join(path, INDEX_FILE), "w", encoding="utf-8") as f:
    json.dump(index, f, indent=2, sort_keys=True)
