r"""Compiles (never runs) the SFT step and the RL policy update, and prints XLA's memory figures.

    # Qwen2.5-VL-7B, FSDP over a v5p 2x2x2 slice (8 chips), 8 sequences of 2048 tokens per
    # step; compiles for TPU on this host (needs libtpu: `pip install "jax[tpu]"`, no TPU)
    python experiments/aot_compile.py --model=qwen2_5_vl_7b --topology=v5p:2x2x2 \
        --batch=8 --seq_len=2048
    # a local checkpoint's architecture (its config.json), 16 chips, text decoder cut to 4 layers
    python experiments/aot_compile.py --model=/ckpt/Qwen2.5-VL-7B-Instruct \
        --topology=v5p:2x2x4 --batch=16 --num_layers=4
    # the test configuration: 8 fake CPU devices and a tiny model
    python experiments/aot_compile.py --model=tiny_qwen2_5_vl --topology=cpu:8 --batch=8 \
        --seq_len=64 --image_size=16

Nothing is allocated: the train state and the batches are `jax.ShapeDtypeStruct`s that carry
their shardings on the mesh (parameters and optimizer moments by their logical axis names,
`cosmojax.parallel.state_shardings`; batch rows over the data-parallel axes), and
`jit(...).lower(...).compile()` runs XLA for the mesh's devices. A TPU topology
(`--topology=v5p:2x2x2`) needs no TPU hardware: libtpu compiles for its device descriptions
(`jax.experimental.topologies`). `--topology=cpu:N` makes N host devices, `local` takes the
devices of this machine.

Compiled, as the trainers call them:
  sft  `cosmojax.sft.sft_step` on `batch` sequences of `seq_len` tokens, each with one image
       of image_size x image_size pixels (`--image_size=0`: text only).
  rl   `cosmojax.rl.learner.update` (CPGD, one epoch, `num_minibatches` minibatches) on a
       rollout of `batch` samples: batch / group_size prompts, one image each, of
       seq_len - completion_len tokens, and completion_len completion tokens per sample.

Per device, from XLA's memory analysis: arguments (the donated train state and the batch),
outputs, aliased (outputs written in place of donated arguments), temporaries (activations
kept for the backward pass, gradients, workspace) and generated code. The peak estimate is
arguments + outputs - aliased + temporaries + code; it fits when that is at most the device's
memory (v5p: the 95.74 GiB libtpu makes available; `--hbm_gib` overrides). XLA refuses to
compile a TPU program whose temporaries exceed the memory; that is reported as "does not
fit" with XLA's message. The figures measured for Qwen2.5-VL-7B are in configs/common.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Sequence

# Runnable as a script from a checkout: the repository root holds cosmojax/ and kernels/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cosmojax import models, optim, types
from cosmojax.checkpointing import abstract_target
from cosmojax.models.inputs import ModelInputs
from cosmojax.parallel import batch_spec, make_mesh
from cosmojax.rl import learner
from cosmojax.rl.losses import PolicyLossConfig
from cosmojax.sft import trainer as sft
from cosmojax.train_state import TrainState

FLAGS = flags.FLAGS
GIB = 1024**3
STEPS = ("sft", "rl")
# Memory per chip of TPU generations, by the prefix of a topology name (`v5p:2x2x2`): what
# libtpu reports as available HBM for v5p (95.74 GiB; 95 GB is the marketed figure), the
# nominal capacity of the others.
HBM_GIB = {"v5p": 95.74, "v5e": 16.0, "v5litepod": 16.0, "v4": 32.0, "v6e": 32.0}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """What compiling one step cost and the per-device memory XLA plans for it (bytes).

  `error` holds XLA's message when compilation failed because the step does not fit in the
  device's memory (the sizes are then 0).
  """

  step: str
  lower_s: float
  compile_s: float
  argument: int = 0
  output: int = 0
  alias: int = 0
  temp: int = 0
  code: int = 0
  error: str = ""

  @property
  def peak(self) -> int:
    """arguments + outputs - aliased + temporaries + generated code."""
    return self.argument + self.output - self.alias + self.temp + self.code


# -------------------------------------------------------------------------- devices and mesh


def cpu_devices(n: int) -> list[jax.Device]:
  """n host CPU devices: asks JAX for them if its backends are not started yet, else takes
  the first n of those it has (e.g. forced by XLA_FLAGS in tests)."""
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # backends already initialised: use what there is
    pass
  devices = jax.devices("cpu")
  if len(devices) < n:
    raise ValueError(f"--topology=cpu:{n}: JAX already started with {len(devices)} CPU "
                     f"devices; set XLA_FLAGS=--xla_force_host_platform_device_count={n}.")
  return devices[:n]


def topology_devices(topology: str) -> tuple[list[Any], float | None]:
  """(devices, memory per device in bytes or None if unknown) of a topology name:
  "cpu:N", "local", or a TPU topology such as "v5p:2x2x2" (compiled for, never run)."""
  if topology.startswith("cpu:"):
    return cpu_devices(int(topology.split(":", 1)[1])), None
  if topology == "local":
    devices = jax.devices()
    limit = (devices[0].memory_stats() or {}).get("bytes_limit")
    return devices, None if limit is None else float(limit)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  generation = topology.split(":", 1)[0]
  try:
    desc = topologies.get_topology_desc(topology_name=topology, platform="tpu")
  except Exception as e:  # libtpu missing or an unknown topology name
    raise ValueError(f"--topology={topology}: cannot describe this TPU topology ({e}); it "
                     "needs libtpu (pip install 'jax[tpu]') and a name like v5p:2x2x2.") from e
  hbm = HBM_GIB.get(generation)
  return list(desc.devices), None if hbm is None else hbm * GIB


def parse_mesh(text: str) -> dict[str, int]:
  """"data=1,fsdp=-1,tensor=1" -> {"data": 1, "fsdp": -1, "tensor": 1}."""
  out = {}
  for item in filter(None, text.split(",")):
    key, _, value = item.partition("=")
    out[key.strip()] = int(value)
  return out


def kernel_backend(backend: str, devices: Sequence[Any]) -> str:
  """The fused log-prob backend for the mesh's platform ("auto" would look at this host's
  default backend, which is the CPU when compiling for a TPU topology)."""
  if backend != "auto":
    return backend
  return {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}.get(devices[0].platform, "xla")


# -------------------------------------------------------------------------- model and state


def model_config(model: str, num_layers: int = 0, vision_depth: int = 0) -> Any:
  """A `CONFIG_PRESETS` name, or a local directory / config.json; optionally with fewer
  decoder layers or vision blocks (full-attention blocks past the cut are dropped)."""
  if model in models.CONFIG_PRESETS:
    config = models.CONFIG_PRESETS.get(model)()
  elif os.path.isdir(model) or model.endswith(".json"):
    config = models.load_config(os.path.dirname(model) if model.endswith(".json") else model)
  else:
    raise ValueError(f"--model={model!r} is neither a preset ({models.CONFIG_PRESETS.names()}) "
                     "nor a local directory with a config.json")
  if num_layers:
    config = dataclasses.replace(config, text=dataclasses.replace(config.text,
                                                                  num_layers=num_layers))
  if vision_depth:
    full = tuple(i for i in config.vision.fullatt_block_indexes if i < vision_depth)
    config = dataclasses.replace(config, vision=dataclasses.replace(
        config.vision, depth=vision_depth, fullatt_block_indexes=full or (vision_depth - 1,)))
  return config


def abstract_state(config: Any, mesh: Mesh, dtype: Any, param_dtype: Any,
                   optimizer: optim.OptimizerConfig) -> TrainState:
  """The `TrainState` of a Qwen2.5-VL as shapes with shardings (nothing allocated)."""
  with nnx.use_eager_sharding(False):
    abstract_model = nnx.eval_shape(
        lambda: models.Qwen2_5_VL(config, dtype=dtype, param_dtype=param_dtype,
                                  rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(abstract_model)
  tx = optim.make_optimizer(optimizer)
  opt_state = jax.eval_shape(tx.init, params)
  step = jax.ShapeDtypeStruct((), jnp.int32)
  return TrainState(step=step, params=abstract_target(params, mesh),
                    opt_state=abstract_target(opt_state, mesh),
                    graphdef=graphdef, tx=tx).replace(step=_replicated(step, mesh))


def parameter_count(state: TrainState) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))


def _replicated(x: Any, mesh: Mesh) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, PartitionSpec()))


def _rows(shape: tuple[int, ...], dtype: Any, mesh: Mesh, batch_dim: int = 0
          ) -> jax.ShapeDtypeStruct:
  """An array whose `batch_dim` is split over the data-parallel axes."""
  sharding = NamedSharding(mesh, batch_spec(len(shape), batch_dim))
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


# -------------------------------------------------------------------------- abstract batches


def _images(config: Any, num_images: int, image_size: int, mesh: Mesh):
  """(pixel_values, vision_meta, image_grid_thw) of `num_images` square images, as shapes.
  The index metadata is computed on the host for its exact shapes (cheap NumPy)."""
  vision = config.vision
  unit = vision.patch_size * vision.spatial_merge_size
  if image_size % unit:
    raise ValueError(f"--image_size={image_size} must be a multiple of patch_size * "
                     f"spatial_merge_size = {unit}")
  side = image_size // vision.patch_size
  grid = np.tile([[1, side, side]], (num_images, 1))
  meta = models.vision_metadata(grid, vision)
  patches = num_images * side * side
  pixels = _replicated(jax.ShapeDtypeStruct((patches, vision.patch_dim), jnp.float32), mesh)
  meta = jax.tree.map(lambda x: _replicated(jax.ShapeDtypeStruct(x.shape, jnp.int32), mesh), meta)
  grid = _replicated(jax.ShapeDtypeStruct(grid.shape, jnp.int32), mesh)
  return pixels, meta, grid


def image_tokens(config: Any, image_size: int) -> int:
  """Placeholder tokens of one square image after the 2x2 merge."""
  return (image_size // config.vision.patch_size) ** 2 // config.vision.merge_unit


def sft_batch(config: Any, mesh: Mesh, batch: int, seq_len: int, image_size: int
              ) -> sft.SFTStepBatch:
  """An `SFTStepBatch` of `batch` sequences of `seq_len` tokens, one image each, as shapes."""
  ids = _rows((batch, seq_len), jnp.int32, mesh)
  pixels = meta = None
  if image_size:
    pixels, meta, _ = _images(config, batch, image_size, mesh)
  inputs = ModelInputs(input_ids=ids, attention_mask=ids,
                       position_ids=_rows((3, batch, seq_len), jnp.int32, mesh, batch_dim=1),
                       pixel_values=pixels, vision_meta=meta)
  return sft.SFTStepBatch(inputs=inputs, loss_mask=ids)


def learner_batch(config: Any, mesh: Mesh, batch: int, seq_len: int, completion_len: int,
                  group_size: int, image_size: int, num_objectives: int
                  ) -> learner.LearnerBatch:
  """A `LearnerBatch` of `batch` samples (batch / group_size prompts), as shapes."""
  if batch % group_size:
    raise ValueError(f"--batch={batch} must be a multiple of --group_size={group_size}")
  if not 0 < completion_len < seq_len:
    raise ValueError(f"--completion_len={completion_len} must lie in (0, --seq_len={seq_len})")
  n = batch
  pixels = meta = grid = None
  if image_size:
    pixels, meta, grid = _images(config, batch // group_size, image_size, mesh)
  per_sample = lambda dtype: _rows((n,), dtype, mesh)
  rollout = types.Rollout(
      tokens=_rows((n, seq_len), jnp.int32, mesh),
      attention_mask=_rows((n, seq_len), jnp.int32, mesh),
      completion_mask=_rows((n, completion_len), jnp.int32, mesh),
      logprobs=_rows((n, completion_len), jnp.float32, mesh),
      position_ids=_rows((3, n, seq_len), jnp.int32, mesh, batch_dim=1),
      prompt_index=per_sample(jnp.int32), sample_index=per_sample(jnp.int32),
      lengths=per_sample(jnp.int32), truncated=per_sample(jnp.bool_),
      task_ids=per_sample(jnp.int32), sample_mask=per_sample(jnp.bool_),
      pixel_values=pixels, image_grid_thw=grid, vision_meta=meta, group_size=group_size)
  return learner.LearnerBatch(
      rollout=rollout, old_logp=_rows((n, completion_len), jnp.float32, mesh),
      advantages=_rows((n, num_objectives), jnp.float32, mesh),
      weights=_replicated(jax.ShapeDtypeStruct((num_objectives,), jnp.float32), mesh),
      sample_mask=per_sample(jnp.bool_))


# -------------------------------------------------------------------------- compilation


def compile_step(step: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> StepMemory:
  """Lowers and compiles a jitted `fn` for abstract arguments; its memory analysis."""
  start = time.perf_counter()
  lowered = fn.lower(*args, **kwargs)
  lowered_at = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:  # XLA refuses a program that cannot fit
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return StepMemory(step=step, lower_s=lowered_at - start,
                      compile_s=time.perf_counter() - lowered_at,
                      error=str(e).splitlines()[0])
  done = time.perf_counter()
  mem = compiled.memory_analysis()
  return StepMemory(step=step, lower_s=lowered_at - start, compile_s=done - lowered_at,
                    argument=int(mem.argument_size_in_bytes),
                    output=int(mem.output_size_in_bytes), alias=int(mem.alias_size_in_bytes),
                    temp=int(mem.temp_size_in_bytes),
                    code=int(mem.generated_code_size_in_bytes))


@dataclasses.dataclass(frozen=True)
class AotSettings:
  """What to compile (see the module docstring and the flags)."""

  batch: int = 8
  seq_len: int = 2048
  completion_len: int = 1024
  group_size: int = 8
  image_size: int = 448
  num_objectives: int = 4
  num_minibatches: int = 1
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  logprob_backend: str = "xla"
  steps: tuple[str, ...] = STEPS


def compile_steps(config: Any, mesh: Mesh, settings: AotSettings
                  ) -> tuple[int, list[StepMemory]]:
  """(parameter count, the memory of each compiled step) of a model config on a mesh."""
  unknown = sorted(set(settings.steps) - set(STEPS))
  if unknown:
    raise ValueError(f"unknown steps {unknown}; known: {list(STEPS)}")
  if settings.image_size and image_tokens(config, settings.image_size) >= settings.seq_len:
    raise ValueError(f"an image of {settings.image_size} px is "
                     f"{image_tokens(config, settings.image_size)} tokens: more than "
                     f"--seq_len={settings.seq_len}")
  backend = kernel_backend(settings.logprob_backend, mesh.devices.flat)
  state = abstract_state(config, mesh, _DTYPES[settings.dtype], _DTYPES[settings.param_dtype],
                         optim.OptimizerConfig(learning_rate=1e-6))
  rng = _replicated(jax.eval_shape(lambda: jax.random.key(0)), mesh)
  reports = []
  if "sft" in settings.steps:
    batch = sft_batch(config, mesh, settings.batch, settings.seq_len, settings.image_size)
    reports.append(compile_step("sft", sft.sft_step, state, batch, rng, backend=backend))
  if "rl" in settings.steps:
    batch = learner_batch(config, mesh, settings.batch, settings.seq_len,
                          settings.completion_len, settings.group_size, settings.image_size,
                          settings.num_objectives)
    config_rl = learner.LearnerConfig(loss=PolicyLossConfig.preset("cpgd"),
                                      num_minibatches=settings.num_minibatches,
                                      logprob_backend=backend)
    reports.append(compile_step("rl", learner.update, state, batch, rng, config_rl))
  return parameter_count(state), reports


def format_report(reports: Sequence[StepMemory], memory_bytes: float | None) -> str:
  """A table of the per-device figures (GiB, or MiB when every peak is below 1 GiB) and
  whether each step fits."""
  scale, unit = (GIB, "GiB") if max((r.peak for r in reports), default=0) >= GIB else (
      2**20, "MiB")
  gib = lambda b: f"{b / scale:8.2f}"
  lines = [f"per-device memory in {unit}:",
           f"{'step':<5} {'args':>8} {'output':>8} {'aliased':>8} {'temp':>8} {'code':>8} "
           f"{'peak':>8}  {'lower s':>7} {'compile s':>9}  fits"]
  for r in reports:
    if r.error:
      lines.append(f"{r.step:<5} does not fit; XLA after {r.compile_s:.1f} s: {r.error}")
      continue
    fits = ("n/a" if memory_bytes is None else
            f"{'yes' if r.peak <= memory_bytes else 'NO'} ({r.peak / memory_bytes:.0%} of "
            f"{memory_bytes / GIB:.0f} GiB)")
    lines.append(f"{r.step:<5} {gib(r.argument)} {gib(r.output)} {gib(r.alias)} {gib(r.temp)} "
                 f"{gib(r.code)} {gib(r.peak)}  {r.lower_s:7.1f} {r.compile_s:9.1f}  {fits}")
  return "\n".join(lines)


# -------------------------------------------------------------------------- command line

def define_flags() -> None:
  """The command-line flags (defined when run as a script: importing defines none)."""
  flags.DEFINE_string("model", "qwen2_5_vl_7b",
                      "A model config preset name, or a local checkpoint directory.")
  flags.DEFINE_string("topology", "v5p:2x2x2",
                      "A TPU topology (v5p:2x2x2), cpu:N (N host devices) or local.")
  flags.DEFINE_string("mesh", "data=1,fsdp=-1,tensor=1", "Mesh axis sizes (-1: the rest).")
  flags.DEFINE_integer("num_layers", 0, "Decoder layers (0: the model's).")
  flags.DEFINE_integer("vision_depth", 0, "Vision blocks (0: the model's).")
  flags.DEFINE_integer("batch", 8, "Sequences per step (global).")
  flags.DEFINE_integer("seq_len", 2048, "Tokens per sequence.")
  flags.DEFINE_integer("completion_len", 0, "RL completion tokens (0: half of seq_len).")
  flags.DEFINE_integer("group_size", 8, "RL samples per prompt.")
  flags.DEFINE_integer("image_size", 448,
                       "Side of the one image per sequence, px (0: text only).")
  flags.DEFINE_integer("num_objectives", 4, "RL reward objectives K.")
  flags.DEFINE_integer("num_minibatches", 1, "RL minibatches per update.")
  flags.DEFINE_enum("dtype", "bfloat16", list(_DTYPES), "Compute dtype.")
  flags.DEFINE_enum("param_dtype", "float32", list(_DTYPES),
                    "Parameter (and optimizer moment) dtype.")
  flags.DEFINE_string(
      "logprob_backend", "xla", "Fused log-prob kernel backend (auto: Pallas on TPU/GPU, XLA on "
      "CPU). The Pallas TPU kernel does not compile on a multi-chip mesh: XLA cannot partition "
      "it (it needs a shard_map).")
  flags.DEFINE_list("steps", list(STEPS), "Which steps to compile.")
  flags.DEFINE_float("hbm_gib", 0.0, "Device memory in GiB (0: known per topology).")
  flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger().setLevel(logging.WARNING)
  devices, memory = topology_devices(FLAGS.topology)
  if FLAGS.hbm_gib:
    memory = FLAGS.hbm_gib * GIB
  mesh = make_mesh(**parse_mesh(FLAGS.mesh), devices=devices)
  config = model_config(FLAGS.model, FLAGS.num_layers, FLAGS.vision_depth)
  settings = AotSettings(
      batch=FLAGS.batch, seq_len=FLAGS.seq_len,
      completion_len=FLAGS.completion_len or FLAGS.seq_len // 2,
      group_size=FLAGS.group_size, image_size=FLAGS.image_size,
      num_objectives=FLAGS.num_objectives, num_minibatches=FLAGS.num_minibatches,
      dtype=FLAGS.dtype, param_dtype=FLAGS.param_dtype, logprob_backend=FLAGS.logprob_backend,
      steps=tuple(FLAGS.steps))
  params, reports = compile_steps(config, mesh, settings)
  print(f"model {FLAGS.model}: {params:,} parameters, {config.text.num_layers} decoder "
        f"layers, {config.vision.depth} vision blocks")
  print(f"topology {FLAGS.topology}: {len(devices)} x {devices[0].device_kind}, mesh "
        f"{dict(mesh.shape)}, logprob backend {kernel_backend(settings.logprob_backend, devices)}")
  print(f"per step: {settings.batch} sequences x {settings.seq_len} tokens, image "
        f"{settings.image_size} px")
  print(format_report(reports, memory))
  if FLAGS.json:
    with open(FLAGS.json, "w", encoding="utf-8") as f:
      json.dump({"model": FLAGS.model, "topology": FLAGS.topology, "parameters": params,
                 "mesh": dict(mesh.shape), "settings": dataclasses.asdict(settings),
                 "memory_bytes": memory,
                 "steps": [{**dataclasses.asdict(r), "peak": r.peak} for r in reports]}, f,
                indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
