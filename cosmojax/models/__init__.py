"""Flax NNX backbones (Qwen2 text LM, Qwen2.5-VL) and Hugging Face safetensors checkpoints.

    model = from_pretrained("/path/to/Qwen2.5-VL-3B-Instruct", dtype=jnp.bfloat16)
    logits = model(input_ids, attention_mask, pixel_values, image_grid_thw)  # [B, T, V]

Random init from a config: `Qwen2_5_VL(tiny_qwen2_5_vl_config(), rngs=nnx.Rngs(0))`.
Reward / value heads on any of them (`heads`): `RewardModel(backbone, rngs=nnx.Rngs(0))`,
saved and loaded with `save_reward_model` / `load_reward_model`.
"""

from cosmojax.models.checkpoint import (MODEL_FAMILIES, CheckpointError, ModelFamily, family_of,
                                        from_pretrained, load_config, save_pretrained)
from cosmojax.models.heads import (HEAD_FILE, RewardModel, ValueModel, gather_last,
                                   last_token_index, load_reward_model, save_reward_model)
from cosmojax.models.configs import (CONFIG_PRESETS, ConfigError, Qwen2_5_VLConfig, TextConfig,
                                     VisionConfig, qwen2_5_vl_7b_config,
                                     qwen2_5_vl_config_from_hf, qwen2_5_vl_config_to_hf,
                                     text_config_from_hf, tiny_qwen2_5_vl_config,
                                     tiny_qwen2_config)
from cosmojax.models.kv_cache import KVCache, init_cache
from cosmojax.models.qwen2 import CausalLM, Qwen2ForCausalLM, default_positions
from cosmojax.models.qwen2_5_vl import Qwen2_5_VL
from cosmojax.models.rope_index import get_rope_index
from cosmojax.models.vision import VisionMeta, num_image_tokens, vision_metadata

__all__ = [
    "CONFIG_PRESETS", "HEAD_FILE", "MODEL_FAMILIES", "CausalLM", "CheckpointError", "ConfigError",
    "KVCache", "ModelFamily", "Qwen2ForCausalLM", "Qwen2_5_VL", "Qwen2_5_VLConfig", "RewardModel",
    "TextConfig", "ValueModel", "VisionConfig", "VisionMeta", "default_positions", "family_of",
    "from_pretrained", "gather_last", "get_rope_index", "init_cache", "last_token_index",
    "load_config", "load_reward_model", "num_image_tokens", "qwen2_5_vl_7b_config",
    "qwen2_5_vl_config_from_hf",
    "qwen2_5_vl_config_to_hf", "save_pretrained", "save_reward_model", "text_config_from_hf",
    "tiny_qwen2_5_vl_config", "tiny_qwen2_config", "vision_metadata",
]
