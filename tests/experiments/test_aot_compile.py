"""experiments/aot_compile.py: the 7B preset, abstract sharded state and batches (no compile),
and one compilation of both steps on the 8 fake CPU devices through the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from cosmojax import models, optim
from cosmojax.parallel import make_mesh
from experiments import aot_compile as aot

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Qwen2.5-VL-7B-Instruct's config.json as published (transformers 4.x flat layout), the fields
# our reader uses; transcribed from the model repository, not produced by our code.
QWEN2_5_VL_7B_CONFIG_JSON = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
    "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 128000,
    "max_window_layers": 28, "num_attention_heads": 28, "num_hidden_layers": 28,
    "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "tie_word_embeddings": False, "use_sliding_window": False,
    "vocab_size": 152064, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {
        "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
        "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
        "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
        "temporal_patch_size": 2},
}


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py forces 8 fake CPU devices)")
  return make_mesh(devices=jax.devices()[:8])


def test_7b_preset_is_the_published_config():
  want = models.qwen2_5_vl_config_from_hf(QWEN2_5_VL_7B_CONFIG_JSON)
  assert models.CONFIG_PRESETS.get("qwen2_5_vl_7b")() == want


def test_7b_state_has_8_29b_parameters_sharded_8_ways(mesh):
  """Nothing is allocated; 8.29B is the parameter count the model card gives."""
  state = aot.abstract_state(models.qwen2_5_vl_7b_config(), mesh, jax.numpy.bfloat16,
                             jax.numpy.float32, optim.OptimizerConfig())
  count = aot.parameter_count(state)
  assert 8.285e9 < count < 8.295e9
  per_device = sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                   for x in jax.tree.leaves(state.params))
  assert per_device < 1.01 * count * 4 / 8  # float32, FSDP over 8: ~1/8 on each device
  embed = state.params["decoder"]["embed"]["embedding"].get_value()
  assert embed.shape == (152064, 3584)
  assert embed.sharding.shard_shape(embed.shape) == (152064, 448)  # model width over fsdp
  # Adam's moments shard like the parameters.
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.shape == (152064, 3584)]
  assert moments and all(m.sharding.shard_shape(m.shape) == (152064, 448) for m in moments)


def test_abstract_batches_shard_rows_and_replicate_images(mesh):
  config = aot.model_config("tiny_qwen2_5_vl")
  sft = aot.sft_batch(config, mesh, batch=8, seq_len=32, image_size=16)
  assert sft.inputs.input_ids.sharding.shard_shape((8, 32)) == (1, 32)
  assert sft.inputs.position_ids.sharding.shard_shape((3, 8, 32)) == (3, 1, 32)
  # 8 images of 16 px in 4 px patches: 16 patches each, replicated on every device.
  assert sft.inputs.pixel_values.shape == (128, 96)
  assert sft.inputs.pixel_values.sharding.is_fully_replicated
  rl = aot.learner_batch(config, mesh, batch=16, seq_len=32, completion_len=8, group_size=4,
                         image_size=16, num_objectives=3)
  assert rl.rollout.tokens.shape == (16, 32) and rl.old_logp.shape == (16, 8)
  assert rl.rollout.pixel_values.shape == (4 * 16, 96)  # one image per prompt
  assert rl.advantages.shape == (16, 3) and rl.rollout.group_size == 4
  with pytest.raises(ValueError, match="multiple of --group_size=3"):
    aot.learner_batch(config, mesh, 16, 32, 8, 3, 16, 1)
  with pytest.raises(ValueError, match="multiple of patch_size"):
    aot.sft_batch(config, mesh, 8, 32, image_size=10)


def test_model_config_cuts_layers_and_reads_directories(tmp_path):
  cut = aot.model_config("qwen2_5_vl_7b", num_layers=2, vision_depth=10)
  assert cut.text.num_layers == 2 and cut.vision.depth == 10
  assert cut.vision.fullatt_block_indexes == (7,)  # the full-attention blocks below the cut
  tiny = models.tiny_qwen2_5_vl_config()
  with open(tmp_path / "config.json", "w") as f:
    json.dump(models.qwen2_5_vl_config_to_hf(tiny), f)
  assert aot.model_config(str(tmp_path)) == tiny
  assert aot.model_config(str(tmp_path / "config.json")) == tiny
  with pytest.raises(ValueError, match="neither a preset"):
    aot.model_config("qwen9")


def test_mesh_topology_and_backend_helpers():
  assert aot.parse_mesh("data=2,fsdp=-1,tensor=1") == {"data": 2, "fsdp": -1, "tensor": 1}
  devices, memory = aot.topology_devices("cpu:8")
  assert len(devices) == 8 and memory is None
  assert aot.kernel_backend("auto", devices) == "xla"
  assert aot.kernel_backend("pallas_tpu", devices) == "pallas_tpu"


@pytest.mark.slow
def test_command_line_compiles_both_steps_on_8_cpu_devices(tmp_path):
  """The script as a user runs it: `--topology=cpu:8`, a tiny model, both steps."""
  out = tmp_path / "aot.json"
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "aot_compile.py"),
         "--model=tiny_qwen2_5_vl", "--num_layers=1", "--vision_depth=1", "--topology=cpu:8",
         "--batch=8", "--seq_len=32", "--completion_len=16", "--group_size=4",
         "--image_size=16", "--num_minibatches=2", "--num_objectives=2", f"--json={out}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "mesh {'data': 1, 'fsdp': 8, 'tensor': 1}" in proc.stdout
  assert "per-device memory in MiB" in proc.stdout
  report = json.loads(out.read_text())
  params = report["parameters"]
  full_state = params * 4 * 3  # float32 parameters and Adam's two moments, unsharded
  steps = {s["step"]: s for s in report["steps"]}
  assert sorted(steps) == ["rl", "sft"]
  for s in steps.values():
    assert not s["error"] and s["temp"] > 0 and s["compile_s"] > 0
    # The arguments hold this device's shard of the state (and of the batch), not all of it.
    assert full_state / 8 < s["argument"] < full_state / 2
    assert s["peak"] == s["argument"] + s["output"] - s["alias"] + s["temp"] + s["code"]
