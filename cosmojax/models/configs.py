"""Model configs: frozen dataclasses read from and written to Hugging Face `config.json` dicts.

`TextConfig` describes the Qwen2 decoder (alone it is `Qwen2ForCausalLM`; with `mrope_section`
it is the language model of Qwen2.5-VL), `VisionConfig` the Qwen2.5-VL vision tower, and
`Qwen2_5_VLConfig` the whole vision-language model. Field names follow transformers where the
meaning is the same; `from_hf`/`to_hf` convert both the flat (pre-v5) and the nested
(`text_config`/`vision_config`, transformers 5.x) layouts of Qwen2.5-VL.

The `tiny_*` factories build the small random-init models of the CPU demo and the tests;
`CONFIG_PRESETS` names real architectures (e.g. "qwen2_5_vl_7b") for sizing work without a
checkpoint on disk (ahead-of-time compilation, memory estimates).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from cosmojax.registry import Registry

# rope types whose maths is the default RoPE (M-RoPE is the default RoPE per section).
_DEFAULT_ROPE_TYPES = (None, "default", "mrope")


class ConfigError(ValueError):
  """A config.json that cannot describe a supported model; the message names the field."""


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """The Qwen2 decoder: GQA attention with q/k/v biases, SwiGLU MLP, RMSNorm, RoPE.

  `mrope_section` (three ints summing to head_dim // 2) switches RoPE to the multimodal
  M-RoPE of Qwen2.5-VL, whose positions are `[3, batch, time]` (temporal, height, width).
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int | None = None  # None: hidden_size // num_heads
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  mrope_section: tuple[int, ...] | None = None
  hidden_act: str = "silu"
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 32768
  initializer_range: float = 0.02
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(
          f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads "
          f"({self.num_kv_heads})")
    if self.mrope_section is not None and (2 * sum(self.mrope_section) != self.dim_per_head
                                           or min(self.mrope_section) < 1):
      raise ConfigError(
          f"rope mrope_section {list(self.mrope_section)} must be positive and sum to "
          f"head_dim // 2 = "
          f"{self.dim_per_head // 2}")

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """The Qwen2.5-VL vision tower: 3-D patch embedding, windowed ViT with 2-D RoPE, merger."""

  depth: int
  hidden_size: int
  intermediate_size: int
  num_heads: int
  out_hidden_size: int
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  in_channels: int = 3
  hidden_act: str = "silu"
  rope_theta: float = 10000.0
  tokens_per_second: int = 4
  initializer_range: float = 0.02

  def __post_init__(self):
    if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
      raise ConfigError(
          f"vision hidden_size ({self.hidden_size}) / num_heads ({self.num_heads}) must be a "
          "multiple of 4 (2-D rotary embedding)")
    if self.window_size % (self.spatial_merge_size * self.patch_size):
      raise ConfigError(
          f"vision window_size ({self.window_size}) must be a multiple of spatial_merge_size * "
          f"patch_size ({self.spatial_merge_size * self.patch_size})")

  @property
  def patch_dim(self) -> int:
    """Length of one flattened patch: channels * temporal_patch * patch * patch."""
    return self.in_channels * self.temporal_patch_size * self.patch_size**2

  @property
  def merge_unit(self) -> int:
    return self.spatial_merge_size**2


@dataclasses.dataclass(frozen=True)
class Qwen2_5_VLConfig:
  """Qwen2.5-VL: vision tower + merger feeding an M-RoPE Qwen2 decoder."""

  text: TextConfig
  vision: VisionConfig
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653

  def __post_init__(self):
    if self.text.mrope_section is None:
      raise ConfigError("Qwen2.5-VL text config needs rope mrope_section")
    if self.vision.out_hidden_size != self.text.hidden_size:
      raise ConfigError(
          f"vision out_hidden_size ({self.vision.out_hidden_size}) must equal text hidden_size "
          f"({self.text.hidden_size})")


def _require(d: Mapping[str, Any], key: str, where: str) -> Any:
  if key not in d:
    raise ConfigError(f"missing field {where}{key}")
  return d[key]


def _rope(d: Mapping[str, Any], where: str, default_theta: float,
          supported: tuple[str | None, ...] = _DEFAULT_ROPE_TYPES) -> tuple[float, Any]:
  rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type"))
  if rope_type not in supported:
    raise ConfigError(f"field {where}rope_parameters.rope_type={rope_type!r} is not supported "
                      f"(supported: {', '.join(t for t in supported if t)})")
  theta = float(rope.get("rope_theta", d.get("rope_theta", default_theta)))
  return theta, rope.get("mrope_section")


def _eos(value: Any) -> int | tuple[int, ...] | None:
  return tuple(value) if isinstance(value, (list, tuple)) else value


def text_config_from_hf(d: Mapping[str, Any], where: str = "", tie: bool | None = None,
                        default_theta: float = 10000.0) -> TextConfig:
  """Reads the decoder fields of a transformers Qwen2 / Qwen2.5-VL text config dict."""
  if d.get("use_sliding_window"):
    raise ConfigError(f"field {where}use_sliding_window=true is not supported")
  theta, mrope_section = _rope(d, where, default_theta)
  num_heads = int(_require(d, "num_attention_heads", where))
  return TextConfig(
      vocab_size=int(_require(d, "vocab_size", where)),
      hidden_size=int(_require(d, "hidden_size", where)),
      intermediate_size=int(_require(d, "intermediate_size", where)),
      num_layers=int(_require(d, "num_hidden_layers", where)),
      num_heads=num_heads,
      num_kv_heads=int(d.get("num_key_value_heads") or num_heads),
      head_dim=d.get("head_dim"),
      rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
      rope_theta=theta,
      mrope_section=tuple(mrope_section) if mrope_section else None,
      hidden_act=d.get("hidden_act", "silu"),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", False) if tie is None else tie),
      max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
      initializer_range=float(d.get("initializer_range", 0.02)),
      bos_token_id=d.get("bos_token_id"),
      eos_token_id=_eos(d.get("eos_token_id")),
      pad_token_id=d.get("pad_token_id"),
  )


def text_config_to_hf(c: TextConfig) -> dict[str, Any]:
  """The transformers field names of a `TextConfig` (without architectures/model_type)."""
  rope: dict[str, Any] = {"rope_theta": c.rope_theta, "rope_type": "default"}
  if c.mrope_section is not None:
    rope["mrope_section"] = list(c.mrope_section)
  d = {
      "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
      "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_layers,
      "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
      "rms_norm_eps": c.rms_norm_eps, "rope_parameters": rope, "hidden_act": c.hidden_act,
      "max_position_embeddings": c.max_position_embeddings,
      "initializer_range": c.initializer_range, "use_sliding_window": False,
      "attention_dropout": 0.0, "bos_token_id": c.bos_token_id,
      "eos_token_id": list(c.eos_token_id) if isinstance(c.eos_token_id, tuple)
                      else c.eos_token_id,
      "pad_token_id": c.pad_token_id,
  }
  if c.head_dim is not None and c.head_dim != c.hidden_size // c.num_heads:
    d["head_dim"] = c.head_dim
  return d


def vision_config_from_hf(d: Mapping[str, Any]) -> VisionConfig:
  where = "vision_config."
  theta, _ = _rope(d, where, 10000.0, supported=(None, "default", "axial"))
  hidden = int(_require(d, "hidden_size", where))
  return VisionConfig(
      depth=int(_require(d, "depth", where)),
      hidden_size=hidden,
      intermediate_size=int(_require(d, "intermediate_size", where)),
      num_heads=int(_require(d, "num_heads", where)),
      out_hidden_size=int(d.get("out_hidden_size", hidden)),
      patch_size=int(d.get("patch_size", 14)),
      temporal_patch_size=int(d.get("temporal_patch_size", 2)),
      spatial_merge_size=int(d.get("spatial_merge_size", 2)),
      window_size=int(d.get("window_size", 112)),
      fullatt_block_indexes=tuple(int(i) for i in d.get("fullatt_block_indexes", ())),
      in_channels=int(d.get("in_channels", d.get("in_chans", 3))),  # in_chans: pre-v5 name
      hidden_act=d.get("hidden_act", "silu"),
      rope_theta=theta,
      tokens_per_second=int(d.get("tokens_per_second", 4)),
      initializer_range=float(d.get("initializer_range", 0.02)),
  )


def vision_config_to_hf(c: VisionConfig) -> dict[str, Any]:
  return {
      "model_type": "qwen2_5_vl_vision", "depth": c.depth, "hidden_size": c.hidden_size,
      "intermediate_size": c.intermediate_size, "num_heads": c.num_heads,
      "out_hidden_size": c.out_hidden_size, "patch_size": c.patch_size,
      "temporal_patch_size": c.temporal_patch_size,
      "spatial_merge_size": c.spatial_merge_size, "window_size": c.window_size,
      "fullatt_block_indexes": list(c.fullatt_block_indexes), "in_channels": c.in_channels,
      "hidden_act": c.hidden_act,
      "rope_parameters": {"rope_theta": c.rope_theta, "rope_type": "axial"},
      "tokens_per_second": c.tokens_per_second, "initializer_range": c.initializer_range,
  }


def qwen2_5_vl_config_from_hf(d: Mapping[str, Any]) -> Qwen2_5_VLConfig:
  """Reads a Qwen2.5-VL config.json dict (flat pre-v5 layout or nested transformers 5.x)."""
  nested = isinstance(d.get("text_config"), Mapping)
  text_d = d["text_config"] if nested else d
  where = "text_config." if nested else ""
  # pre-v5 saves may carry tie_word_embeddings inside text_config (transformers forwards it).
  tie = bool(d.get("tie_word_embeddings", False) or text_d.get("tie_word_embeddings", False))
  return Qwen2_5_VLConfig(
      text=text_config_from_hf(text_d, where, tie=tie, default_theta=1000000.0),
      vision=vision_config_from_hf(_require(d, "vision_config", "")),
      image_token_id=int(d.get("image_token_id", 151655)),
      video_token_id=int(d.get("video_token_id", 151656)),
      vision_start_token_id=int(d.get("vision_start_token_id", 151652)),
      vision_end_token_id=int(d.get("vision_end_token_id", 151653)),
  )


def qwen2_5_vl_config_to_hf(c: Qwen2_5_VLConfig) -> dict[str, Any]:
  """The nested config.json layout that transformers 5.x writes for Qwen2.5-VL."""
  text = {"model_type": "qwen2_5_vl_text", **text_config_to_hf(c.text)}
  return {
      "architectures": ["Qwen2_5_VLForConditionalGeneration"],
      "model_type": "qwen2_5_vl",
      "text_config": text,
      "vision_config": vision_config_to_hf(c.vision),
      "image_token_id": c.image_token_id, "video_token_id": c.video_token_id,
      "vision_start_token_id": c.vision_start_token_id,
      "vision_end_token_id": c.vision_end_token_id,
      "tie_word_embeddings": c.text.tie_word_embeddings,
  }


def qwen2_config_to_hf(c: TextConfig) -> dict[str, Any]:
  return {
      "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
      **text_config_to_hf(c), "tie_word_embeddings": c.tie_word_embeddings,
  }


def tiny_qwen2_config(vocab_size: int = 256, hidden_size: int = 64, num_layers: int = 2,
                      num_heads: int = 4, num_kv_heads: int = 2,
                      tie_word_embeddings: bool = False, **overrides: Any) -> TextConfig:
  """A tiny Qwen2 text decoder (random init in seconds on CPU)."""
  return TextConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                    intermediate_size=2 * hidden_size, num_layers=num_layers,
                    num_heads=num_heads, num_kv_heads=num_kv_heads,
                    tie_word_embeddings=tie_word_embeddings, **overrides)


def tiny_qwen2_5_vl_config(vocab_size: int = 256, hidden_size: int = 64, num_layers: int = 2,
                           num_heads: int = 4, num_kv_heads: int = 2, vision_hidden: int = 32,
                           vision_depth: int = 2, tie_word_embeddings: bool = False,
                           image_token_id: int | None = None, *,
                           video_token_id: int | None = None,
                           vision_start_token_id: int | None = None,
                           vision_end_token_id: int | None = None,
                           patch_size: int = 4, window_size: int | None = None,
                           intermediate_size: int | None = None) -> Qwen2_5_VLConfig:
  """A tiny Qwen2.5-VL-shaped model for the CPU demo and tests.

  Patches are `patch_size` pixels (default 4) with temporal patch 2, merged 2x2, windows of
  2x2 merged units (window_size = 4 * patch_size px unless given); the last vision block uses
  full attention. The four vision special tokens take the top ids of the vocabulary
  (image = vocab-4, video = vocab-3, vision start = vocab-2, vision end = vocab-1), or follow
  `image_token_id` consecutively, unless each id is given (a tokenizer built by
  `cosmojax.data.build_tokenizer` has start 3, end 4, image 5, video 6).
  """
  # M-RoPE splits the head_dim/2 frequencies as Qwen2.5-VL does ([16, 24, 24] of 64):
  # a quarter to time, the rest shared by height and width.
  half = hidden_size // num_heads // 2
  t = max(half // 4, 1)
  section = (t, (half - t) // 2, half - t - (half - t) // 2)
  text = tiny_qwen2_config(vocab_size, hidden_size, num_layers, num_heads, num_kv_heads,
                           tie_word_embeddings, mrope_section=section, rope_theta=10000.0)
  if intermediate_size is not None:
    text = dataclasses.replace(text, intermediate_size=intermediate_size)
  vision = VisionConfig(depth=vision_depth, hidden_size=vision_hidden,
                        intermediate_size=2 * vision_hidden, num_heads=2,
                        out_hidden_size=hidden_size, patch_size=patch_size,
                        temporal_patch_size=2, spatial_merge_size=2,
                        window_size=window_size or 4 * patch_size,
                        fullatt_block_indexes=(vision_depth - 1,))
  base = vocab_size - 4 if image_token_id is None else image_token_id
  pick = lambda given, default: default if given is None else given
  return Qwen2_5_VLConfig(text=text, vision=vision, image_token_id=base,
                          video_token_id=pick(video_token_id, base + 1),
                          vision_start_token_id=pick(vision_start_token_id, base + 2),
                          vision_end_token_id=pick(vision_end_token_id, base + 3))


CONFIG_PRESETS = Registry[Callable[[], Any]]("model config preset")


@CONFIG_PRESETS.register("qwen2_5_vl_7b")
def qwen2_5_vl_7b_config() -> Qwen2_5_VLConfig:
  """Qwen2.5-VL-7B-Instruct's architecture, as its published config.json gives it (8.29B
  parameters): a 28-layer decoder of width 3584 (28 query / 4 key-value heads of 128, SwiGLU
  18944, vocabulary 152064, untied LM head, M-RoPE sections 16/24/24, theta 1e6) and a
  32-block vision tower of width 1280 (16 heads, MLP 3420, windows of 112 px, full attention
  in blocks 7, 15, 23, 31) merged 2x2 into the decoder width."""
  text = TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                    num_layers=28, num_heads=28, num_kv_heads=4, rms_norm_eps=1e-6,
                    rope_theta=1000000.0, mrope_section=(16, 24, 24), hidden_act="silu",
                    tie_word_embeddings=False, max_position_embeddings=128000,
                    bos_token_id=151643, eos_token_id=151645)
  vision = VisionConfig(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                        out_hidden_size=3584, patch_size=14, temporal_patch_size=2,
                        spatial_merge_size=2, window_size=112,
                        fullatt_block_indexes=(7, 15, 23, 31), hidden_act="silu",
                        tokens_per_second=2)
  return Qwen2_5_VLConfig(text=text, vision=vision, image_token_id=151655,
                          video_token_id=151656, vision_start_token_id=151652,
                          vision_end_token_id=151653)


CONFIG_PRESETS.register("tiny_qwen2_5_vl")(tiny_qwen2_5_vl_config)
