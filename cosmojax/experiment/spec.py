"""The typed, validated form of an experiment config.

Configs are `ml_collections.ConfigDict`s (one file per experiment in configs/); this module
turns one into frozen dataclasses, rejecting unknown or misspelled keys with an error that
names the key, where it is, and the known keys, so a typo never silently falls back to a
default.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from cosmojax.optim import OptimizerConfig
from cosmojax.rl.advantages import AdvantageConfig
from cosmojax.rl.learner import LearnerConfig
from cosmojax.rl.losses import PolicyLossConfig
from cosmojax.rl.trainer import OverlongConfig

STAGE_KINDS = ("sft", "rl")


def _as_dict(value: Any) -> dict[str, Any]:
  if value is None:
    return {}
  if hasattr(value, "to_dict"):
    return value.to_dict()
  return dict(value)


def build(cls: type, value: Any, where: str, **converters: Any) -> Any:
  """`cls(**value)` after checking every key is a field of `cls` (error names `where`);
  `converters` map field names to functions applied to the given values."""
  value = _as_dict(value)
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(value) - fields)
  if unknown:
    raise ValueError(f"config {where}: unknown keys {unknown}; known: {sorted(fields)}")
  for name, convert in converters.items():
    if name in value:
      value[name] = convert(value[name])
  try:
    return cls(**value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config {where}: {e}") from e


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Attributes:
    path: a local Hugging Face directory (config.json + safetensors); empty: random init from
      `tiny` with the tokenizer's vocabulary and special-token ids.
    dtype: compute dtype, "float32" or "bfloat16".
    param_dtype: dtype the parameters (and so the optimizer moments) are stored in; float32
      keeps small updates (lr 1e-6) that bfloat16 weights would round away.
    tiny: keyword arguments of `cosmojax.models.tiny_qwen2_5_vl_config`.
  """

  path: str = ""
  dtype: str = "float32"
  param_dtype: str = "float32"
  tiny: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16"):
        raise ValueError(f"model.{name} is {getattr(self, name)!r}; known: 'float32', "
                         "'bfloat16'.")


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Attributes:
    kind: "synthetic" (the procedural safety suite) or "files" (JSONL/Parquet sources).
    suite: `cosmojax.data.SuiteConfig` fields (synthetic).
    examples_per_task: RL prompt pool per task (synthetic, train split).
    sft_mix: `cosmojax.data.SFTMixConfig` fields (synthetic).
    sources: name -> {"path": local .jsonl/.parquet, "task": optional task override,
      "split": "train"|"eval"} (files).
    max_length: longest formatted SFT example (tokens, images included).
    prompt_length_buckets: static prompt lengths of RL and evaluation batches.
    max_images_per_example: images an example may carry.
  """

  kind: str = "synthetic"
  suite: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  examples_per_task: int = 2000
  sft_mix: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  sources: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  max_length: int = 96
  prompt_length_buckets: tuple[int, ...] = (64,)
  max_images_per_example: int = 1

  def __post_init__(self):
    if self.kind not in ("synthetic", "files"):
      raise ValueError(f"data.kind is {self.kind!r}; known: 'synthetic', 'files'.")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  examples_per_task: int = 32
  batch_size: int = 64
  max_new_tokens: int = 48


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage of training.

  Attributes:
    name: the stage's name (its key in `config.stages`).
    kind: "sft" or "rl".
    steps: trainer steps (SFT batches or RL rollout batches).
    batch_size: SFT examples per step.
    prompts_per_step: RL prompts per step (each sampled `sampling.group_size` times).
    mixture: source/task name -> weight; SFT stages of the synthetic suite use its SFT set.
    recipe: {"name": a `REWARD_RECIPES` name, "kwargs": {...}} or a full recipe dict
      ({"objectives": ..., "tasks": ...}) (RL).
    sampling: `cosmojax.rollout.SamplingConfig` fields (RL).
    learner: {"loss": PolicyLossConfig fields, "advantage": AdvantageConfig fields, and the
      other LearnerConfig fields} (RL).
    optimizer: `cosmojax.optim.OptimizerConfig` fields.
    jailbreak: `cosmojax.data.JailbreakConfig` fields to augment unsafe prompts on the fly,
      or None.
    overlong: DAPO's soft overlong punishment as an extra objective "overlong" (RL):
      {"max_length", "cache_length", "weight"} (`cosmojax.rl.trainer.OverlongConfig`), or None.
    evaluate: evaluate on the held-out set after the stage.
  """

  name: str
  kind: str
  steps: int
  batch_size: int = 32
  prompts_per_step: int = 16
  mixture: Mapping[str, float] = dataclasses.field(default_factory=dict)
  recipe: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  sampling: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  learner: LearnerConfig = LearnerConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  jailbreak: Mapping[str, Any] | None = None
  overlong: OverlongConfig | None = None
  evaluate: bool = True

  def __post_init__(self):
    if self.kind not in STAGE_KINDS:
      raise ValueError(f"stage {self.name!r}: kind is {self.kind!r}; known: {STAGE_KINDS}.")
    if self.steps < 0:
      raise ValueError(f"stage {self.name!r}: steps is {self.steps} (< 0).")
    if self.kind == "rl" and not self.recipe:
      raise ValueError(f"stage {self.name!r}: an RL stage needs a reward recipe.")


def _learner(value: Any, where: str) -> LearnerConfig:
  value = _as_dict(value)
  loss = build(PolicyLossConfig, value.pop("loss", {}), f"{where}.loss")
  advantage = build(AdvantageConfig, value.pop("advantage", {}), f"{where}.advantage")
  return build(LearnerConfig, {**value, "loss": loss, "advantage": advantage}, where)


def stage_spec(name: str, value: Any) -> StageSpec:
  where = f"stages.{name}"
  value = {**_as_dict(value), "name": name}
  return build(
      StageSpec, value, where,
      learner=lambda v: _learner(v, f"{where}.learner"),
      optimizer=lambda v: build(OptimizerConfig, v, f"{where}.optimizer",
                                no_decay=tuple),
      mixture=_as_dict, recipe=_as_dict, sampling=_as_dict,
      jailbreak=lambda v: None if v is None else _as_dict(v),
      overlong=lambda v: None if v is None else build(OverlongConfig, v, f"{where}.overlong"))


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
  """A whole experiment: model, data, evaluation, checkpointing and the ordered stages."""

  seed: int
  workdir: str
  resume: bool
  mesh: Mapping[str, int]
  model: ModelSpec
  tokenizer_path: str
  image: Mapping[str, Any]
  data: DataSpec
  eval: EvalSpec
  checkpoint_every: int
  checkpoint_keep: int
  stages: tuple[StageSpec, ...]


_TOP_LEVEL = ("seed", "workdir", "resume", "mesh", "model", "tokenizer", "image", "data", "eval",
              "checkpoint", "stage_order", "stages")


def experiment_spec(config: Any) -> ExperimentSpec:
  """Validates an experiment `ConfigDict` (see configs/cosmo_tiny.py for the layout)."""
  config = _as_dict(config)
  unknown = sorted(set(config) - set(_TOP_LEVEL))
  if unknown:
    raise ValueError(f"config: unknown top-level keys {unknown}; known: {sorted(_TOP_LEVEL)}")
  stages = _as_dict(config.get("stages"))
  order = tuple(config.get("stage_order") or stages)
  missing = [name for name in order if name not in stages]
  if missing:
    raise ValueError(f"config stage_order names {missing}, not in stages {sorted(stages)}")
  tokenizer = _as_dict(config.get("tokenizer"))
  if set(tokenizer) - {"path"}:
    raise ValueError(f"config tokenizer: unknown keys {sorted(set(tokenizer) - {'path'})}; "
                     "known: ['path']")
  checkpoint = _as_dict(config.get("checkpoint"))
  if set(checkpoint) - {"every", "keep"}:
    raise ValueError(f"config checkpoint: unknown keys {sorted(set(checkpoint) - {'every', 'keep'})}"
                     "; known: ['every', 'keep']")
  return ExperimentSpec(
      seed=int(config.get("seed", 0)),
      workdir=str(config["workdir"]),
      resume=bool(config.get("resume", True)),
      mesh=_as_dict(config.get("mesh")),
      model=build(ModelSpec, config.get("model"), "model", tiny=_as_dict),
      tokenizer_path=str(tokenizer.get("path", "")),
      image=_as_dict(config.get("image")),
      data=build(DataSpec, config.get("data"), "data", suite=_as_dict, sft_mix=_as_dict,
                 sources=_as_dict, prompt_length_buckets=tuple),
      eval=build(EvalSpec, config.get("eval"), "eval"),
      checkpoint_every=int(checkpoint.get("every", 50)),
      checkpoint_keep=int(checkpoint.get("keep", 2)),
      stages=tuple(stage_spec(name, stages[name]) for name in order),
  )
