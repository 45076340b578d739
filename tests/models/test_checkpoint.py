"""from_pretrained / save_pretrained: exact round trips, transformers loads them, clear errors."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from cosmojax import models
from tests import common

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  return common.save_tiny_hf_model(common.tiny_qwen2_5_vl_hf_config(),
                                   tmp_path_factory.mktemp("hf_vl"))


@pytest.fixture(scope="module")
def model(hf_dir):
  return models.from_pretrained(hf_dir)


def flat_params(model):
  return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def assert_same_params(a, b):
  fa, fb = flat_params(a), flat_params(b)
  assert fa.keys() == fb.keys()
  for p in fa:
    assert fa[p].dtype == fb[p].dtype, p
    np.testing.assert_array_equal(fa[p], fb[p], err_msg=str(p))


def copy_ckpt(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def test_save_writes_what_transformers_writes_and_round_trips(hf_dir, model, tmp_path):
  models.save_pretrained(model, str(tmp_path))
  ours = load_file(os.path.join(tmp_path, "model.safetensors"))
  theirs = load_file(os.path.join(hf_dir, "model.safetensors"))
  assert ours.keys() == theirs.keys()
  for name in theirs:
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
  reloaded = models.from_pretrained(str(tmp_path))
  assert reloaded.config == model.config
  assert_same_params(reloaded, model)


def test_transformers_loads_a_randomly_initialised_model_and_agrees(tmp_path):
  config = models.tiny_qwen2_5_vl_config(vocab_size=common.TINY_VOCAB, tie_word_embeddings=True)
  model = models.Qwen2_5_VL(config, rngs=nnx.Rngs(3))
  models.save_pretrained(model, str(tmp_path))
  assert not any("lm_head" in k for k in load_file(os.path.join(tmp_path, "model.safetensors")))
  hf = common.load_hf_model(tmp_path)
  grids = [(1, 4, 4)]
  ids = np.array([common.image_prompt([1, 2, grids[0], 3])])
  pixels = common.random_patches(grids)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels),
             image_grid_thw=torch.tensor(np.array(grids)),
             mm_token_type_ids=torch.tensor((ids == common.TINY_IMAGE_TOKEN) * 1)).logits.numpy()
  positions, _ = models.get_rope_index(ids, grids, None, config)
  meta = models.vision_metadata(grids, config.vision)
  graphdef, state = nnx.split(model)
  ours = jax.jit(lambda s: nnx.merge(graphdef, s)(ids, pixel_values=pixels,
                                                  position_ids=positions, vision_meta=meta))(state)
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_sharded_save_loads_in_both_frameworks(model, tmp_path):
  models.save_pretrained(model, str(tmp_path), max_shard_bytes=100_000)
  with open(os.path.join(tmp_path, "model.safetensors.index.json")) as f:
    weight_map = json.load(f)["weight_map"]
  assert len(set(weight_map.values())) > 1
  assert not os.path.exists(os.path.join(tmp_path, "model.safetensors"))
  assert_same_params(models.from_pretrained(str(tmp_path)), model)
  hf_state = common.load_hf_model(tmp_path).state_dict()
  np.testing.assert_array_equal(hf_state["model.language_model.layers.1.mlp.up_proj.weight"],
                                model.decoder.layers[1].mlp.up.kernel[...].T)


def test_loads_the_model_language_model_naming_scheme(hf_dir, model, tmp_path):
  tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
  renamed = {("model.language_model." + k[len("model."):] if k.startswith("model.") else
              "model." + k if k.startswith("visual.") else k): v for k, v in tensors.items()}
  assert "model.visual.merger.ln_q.weight" in renamed
  os.makedirs(tmp_path / "new")
  shutil.copy(os.path.join(hf_dir, "config.json"), tmp_path / "new")
  save_file(renamed, str(tmp_path / "new" / "model.safetensors"), metadata={"format": "pt"})
  assert_same_params(models.from_pretrained(str(tmp_path / "new")), model)


def test_bfloat16_load_and_save(hf_dir, model, tmp_path):
  bf16 = models.from_pretrained(hf_dir, dtype=jnp.bfloat16)
  kernel = bf16.decoder.layers[0].attn.q.kernel[...]
  assert kernel.dtype == jnp.bfloat16
  np.testing.assert_array_equal(kernel, model.decoder.layers[0].attn.q.kernel[...].astype(
      jnp.bfloat16))
  models.save_pretrained(bf16, str(tmp_path))
  with open(os.path.join(tmp_path, "config.json")) as f:
    assert json.load(f)["dtype"] == "bfloat16"
  hf = common.load_hf_model(tmp_path)
  assert hf.lm_head.weight.dtype == torch.bfloat16


# --- bad checkpoints --------------------------------------------------------------------------


def _rewrite(path, edit):
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  edit(tensors)
  save_file(tensors, file, metadata={"format": "pt"})


def test_truncated_file_is_named(hf_dir, tmp_path):
  path = copy_ckpt(hf_dir, tmp_path / "c")
  file = os.path.join(path, "model.safetensors")
  with open(file, "r+b") as f:
    f.truncate(os.path.getsize(file) // 2)
  with pytest.raises(models.CheckpointError, match="model.safetensors"):
    models.from_pretrained(path)


def test_missing_tensor_is_named(hf_dir, tmp_path):
  path = copy_ckpt(hf_dir, tmp_path / "c")
  _rewrite(path, lambda t: t.pop("visual.blocks.2.attn.qkv.bias"))
  with pytest.raises(models.CheckpointError,
                     match=r"missing tensor.*visual\.blocks\.2\.attn\.qkv\.bias"):
    models.from_pretrained(path)


def test_unexpected_tensor_is_named(hf_dir, tmp_path):
  path = copy_ckpt(hf_dir, tmp_path / "c")
  _rewrite(path, lambda t: t.update({"model.layers.7.extra.weight": np.zeros(3, np.float32)}))
  with pytest.raises(models.CheckpointError, match=r"unexpected tensor.*model\.layers\.7\.extra"):
    models.from_pretrained(path)


def test_wrong_shape_is_named(hf_dir, tmp_path):
  path = copy_ckpt(hf_dir, tmp_path / "c")
  _rewrite(path, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight":
                                     np.zeros((16, 64), np.float32)}))
  with pytest.raises(models.CheckpointError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight' "
                     r"has shape \[16, 64\], config\.json implies \[32, 64\]"):
    models.from_pretrained(path)


def test_unknown_architecture_is_named(hf_dir, tmp_path):
  path = copy_ckpt(hf_dir, tmp_path / "c")
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  config.update(architectures=["LlamaForCausalLM"], model_type="llama")
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(models.CheckpointError, match=r"LlamaForCausalLM.*known: .*Qwen2ForCausalLM"):
    models.from_pretrained(path)


def test_missing_files_and_shards_are_named(model, tmp_path):
  with pytest.raises(models.CheckpointError, match="config.json: file not found"):
    models.from_pretrained(str(tmp_path))
  models.save_pretrained(model, str(tmp_path), max_shard_bytes=100_000)
  shard = next(f for f in os.listdir(tmp_path) if f.startswith("model-00002-of-"))
  os.remove(os.path.join(tmp_path, shard))
  with pytest.raises(models.CheckpointError,
                     match=r"shard model-00002-of-\d+\.safetensors not found"):
    models.from_pretrained(str(tmp_path))


def test_unsupported_config_field_is_named(hf_dir, tmp_path):
  path = copy_ckpt(hf_dir, tmp_path / "c")
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  config["text_config"]["rope_parameters"]["rope_type"] = "yarn"
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(models.CheckpointError,
                     match=r"text_config\.rope_parameters\.rope_type='yarn'"):
    models.from_pretrained(path)


def test_tied_checkpoint_may_carry_an_equal_lm_head_only(tmp_path):
  model = models.Qwen2ForCausalLM(models.tiny_qwen2_config(tie_word_embeddings=True),
                                  rngs=nnx.Rngs(0))
  models.save_pretrained(model, str(tmp_path))
  embed = np.asarray(model.decoder.embed.embedding[...])
  _rewrite(tmp_path, lambda t: t.update({"lm_head.weight": embed}))
  assert_same_params(models.from_pretrained(str(tmp_path)), model)
  _rewrite(tmp_path, lambda t: t.update({"lm_head.weight": embed + 1}))
  with pytest.raises(models.CheckpointError, match="'lm_head.weight' differs from the embedding"):
    models.from_pretrained(str(tmp_path))
