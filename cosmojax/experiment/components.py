"""Builds the parts of an experiment from its spec: tokenizer, images, model, data, engine."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import jax.numpy as jnp
from flax import nnx

from cosmojax import models, types
from cosmojax.data import (BatchSpec, ChatFormatter, ImageProcessor, JailbreakAugment,
                           JailbreakConfig, SFTMixConfig, SuiteConfig, SyntheticSource,
                           build_pipeline, build_suite_tokenizer, eval_batches, load_tokenizer,
                           qwen_token_ids, read_jsonl, read_parquet, safety_target, sft_source)
from cosmojax.data import synthetic
from cosmojax.experiment.spec import ExperimentSpec, StageSpec, build
from cosmojax.parallel import make_mesh, shard_state
from cosmojax.rollout import JaxRolloutEngine, SamplingConfig

_log = logging.getLogger(__name__)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Components:
  """Everything an experiment's stages share (built once by `build_components`)."""

  spec: ExperimentSpec
  tokenizer: Any
  eos_ids: tuple[int, ...]
  pad_id: int
  image_processor: ImageProcessor
  model_config: Any
  sft_formatter: ChatFormatter  # examples with targets, up to data.max_length tokens
  prompt_formatter: ChatFormatter  # prompts, up to the largest prompt length bucket
  task_names: tuple[str, ...]
  prompt_sources: dict[str, Any]  # name -> random-access examples (RL prompts)
  sft_sources: dict[str, Any]  # name -> random-access examples with targets
  eval_examples: list[types.Example]
  mesh: jax.sharding.Mesh

  def position_fn(self, ids, mask, grid):
    """The collator's M-RoPE hook: host-side `get_rope_index`."""
    return models.get_rope_index(ids, grid, mask, self.model_config)

  def prompt_spec(self, batch_size: int) -> BatchSpec:
    return BatchSpec.for_images(batch_size, self.spec.data.prompt_length_buckets,
                                self.image_processor, self.spec.data.max_images_per_example)


def _tokenizer(spec: ExperimentSpec, suite: SuiteConfig | None):
  if spec.tokenizer_path:
    return load_tokenizer(spec.tokenizer_path)
  if suite is None:
    raise ValueError("config tokenizer.path is empty, which means the synthetic suite's "
                     "tokenizer, but data.kind is not 'synthetic'.")
  return build_suite_tokenizer(suite)


def _model_config(spec: ExperimentSpec, tokenizer, image_processor: ImageProcessor):
  if spec.model.path:
    return models.load_config(spec.model.path)
  ids = qwen_token_ids(tokenizer)
  tiny = dict(spec.model.tiny)
  if tiny.get("patch_size", image_processor.patch_size) != image_processor.patch_size:
    raise ValueError(f"config model.tiny.patch_size={tiny['patch_size']} differs from the image "
                     f"processor's patch size {image_processor.patch_size} (config image).")
  tiny["patch_size"] = image_processor.patch_size
  vocab = -(-len(tokenizer) // 64) * 64  # rounded up: a friendlier matmul size
  return models.tiny_qwen2_5_vl_config(
      vocab_size=vocab, image_token_id=ids.image_pad, video_token_id=ids.video_pad,
      vision_start_token_id=ids.vision_start, vision_end_token_id=ids.vision_end, **tiny)


def _file_sources(spec: ExperimentSpec, split: str) -> dict[str, Any]:
  readers = {".jsonl": read_jsonl, ".parquet": read_parquet}
  out = {}
  for name, source in spec.data.sources.items():
    source = dict(source)
    if source.get("split", "train") != split:
      continue
    path = str(source["path"])
    reader = next((r for ext, r in readers.items() if path.endswith(ext)), None)
    if reader is None:
      raise ValueError(f"config data.sources.{name}.path={path!r}: expected a .jsonl or "
                       ".parquet file.")
    out[name] = reader(path, task=source.get("task"))
  return out


def _suite_data(spec: ExperimentSpec, suite: SuiteConfig):
  data = spec.data
  prompts = {task: SyntheticSource({task: data.examples_per_task}, "train", suite)
             for task in synthetic.TASK_NAMES}
  sft = {"sft": sft_source(build(SFTMixConfig, data.sft_mix, "data.sft_mix"), suite)}
  evals = [e for task in synthetic.TASK_NAMES
           for e in synthetic.generate(task, "eval", spec.eval.examples_per_task, suite)]
  return prompts, sft, evals


def build_components(spec: ExperimentSpec) -> Components:
  """Tokenizer, image processor, model config, formatter, data sources and the mesh."""
  suite = (build(SuiteConfig, spec.data.suite, "data.suite", benign_forms=tuple)
           if spec.data.kind == "synthetic" else None)
  tokenizer = _tokenizer(spec, suite)
  ids = qwen_token_ids(tokenizer)
  processor = build(ImageProcessor, spec.image, "image")
  model_config = _model_config(spec, tokenizer, processor)
  formatter = lambda length: ChatFormatter(
      tokenizer, processor, max_length=length,
      max_images_per_example=spec.data.max_images_per_example)
  if suite is not None:
    prompts, sft, evals = _suite_data(spec, suite)
    task_names = tuple(synthetic.TASK_NAMES)
  else:
    prompts = sft = _file_sources(spec, "train")
    evals = [e for source in _file_sources(spec, "eval").values() for e in source]
    task_names = tuple(sorted({e.task for src in prompts.values() for e in src} |
                              {e.task for e in evals}))
  return Components(
      spec=spec, tokenizer=tokenizer, eos_ids=(ids.im_end, ids.pad), pad_id=ids.pad,
      image_processor=processor, model_config=model_config,
      sft_formatter=formatter(spec.data.max_length),
      prompt_formatter=formatter(spec.data.prompt_length_buckets[-1]),
      task_names=task_names, prompt_sources=prompts, sft_sources=sft, eval_examples=evals,
      mesh=make_mesh(**spec.mesh))


def init_model(c: Components) -> nnx.Module:
  """The policy: loaded from `model.path` or randomly initialised (seeded), on the mesh."""
  dtype, param_dtype = _DTYPES[c.spec.model.dtype], _DTYPES[c.spec.model.param_dtype]
  if c.spec.model.path:
    model = models.from_pretrained(c.spec.model.path, dtype=dtype, param_dtype=param_dtype)
  else:
    model = models.Qwen2_5_VL(c.model_config, dtype=dtype, param_dtype=param_dtype,
                              rngs=nnx.Rngs(c.spec.seed))
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, shard_state(state, c.mesh))


def make_engine(c: Components, model: nnx.Module, max_new_tokens: Sequence[int]
                ) -> JaxRolloutEngine:
  """The rollout engine of the policy, with completion buckets for the given lengths."""
  return JaxRolloutEngine(model, pad_id=c.pad_id, mesh=c.mesh,
                          prompt_buckets=c.spec.data.prompt_length_buckets,
                          completion_buckets=tuple(sorted(set(max_new_tokens))))


def sampling_config(c: Components, values: Mapping[str, Any], where: str) -> SamplingConfig:
  """A `SamplingConfig` from config values, stopping at the chat template's end of turn."""
  values = dict(values)
  values.setdefault("eos_ids", c.eos_ids)
  return build(SamplingConfig, values, where, eos_ids=tuple)


def _jailbreak(stage: StageSpec, sources: Mapping[str, Any], seed: int) -> dict[str, Any]:
  """The stage's sources, unsafe (and listed safe) tasks augmented with jailbreaks."""
  if stage.jailbreak is None:
    return dict(sources)
  config = build(JailbreakConfig, stage.jailbreak, f"stages.{stage.name}.jailbreak",
                 safe_tasks=tuple)
  augment = JailbreakAugment(config, target_fn=safety_target)
  out = {}
  for name, source in sources.items():
    ds = grain.MapDataset.source(source)
    out[name] = ds.random_map(augment, seed=seed) if stage.mixture.get(name, 0) else ds
  return out


def stage_batches(c: Components, stage: StageSpec, seed: int) -> grain.IterDataset:
  """The stage's endless stream of (batch, meta): SFT batches or RL prompt batches."""
  if stage.kind == "sft":
    sources = c.sft_sources
    weights = dict(stage.mixture) or {name: 1.0 for name in sources}
    spec = BatchSpec.for_images(stage.batch_size, (c.spec.data.max_length,),
                                c.image_processor, c.spec.data.max_images_per_example)
    mode = "sft"
  else:
    sources = _jailbreak(stage, c.prompt_sources, seed)
    weights, spec, mode = dict(stage.mixture), c.prompt_spec(stage.prompts_per_step), "prompt"
  formatter = c.sft_formatter if mode == "sft" else c.prompt_formatter
  unknown = sorted(set(weights) - set(sources))
  if unknown:
    raise ValueError(f"config stages.{stage.name}.mixture names unknown sources {unknown}; "
                     f"known: {sorted(sources)}")
  return build_pipeline(sources, weights, formatter, spec, mode=mode, seed=seed,
                        task_names=c.task_names, position_fn=c.position_fn)


def evaluation_batches(c: Components) -> Callable[[], Any]:
  """A fresh ordered pass over the held-out prompts, each time it is called."""
  spec = c.prompt_spec(c.spec.eval.batch_size)
  return lambda: eval_batches(c.eval_examples, c.prompt_formatter, spec, task_names=c.task_names,
                              position_fn=c.position_fn)
