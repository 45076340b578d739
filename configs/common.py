"""Helpers of the experiment configs: the config argument, data files, the 7B model setup.

    args = parse_arg("model=/ckpt/Qwen2.5-VL-7B-Instruct,data=/data/mix,smoke",
                     model="", data="", smoke=False, sft_steps=2000)
    args.model, args.smoke, args.sft_steps   # "/ckpt/...", True, 2000

A config file's argument is what follows ":" in `--config=configs/<name>.py:<arg>`
(big_vision's `parse_arg`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import ml_collections

_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("0", "false", "no", "n", "off")


def _convert(key: str, text: str, default: Any) -> Any:
  if isinstance(default, bool):
    if text.lower() not in _TRUE + _FALSE:
      raise ValueError(f"config argument {key}={text!r}: expected a boolean ({_TRUE + _FALSE})")
    return text.lower() in _TRUE
  try:
    return type(default)(text)
  except ValueError:
    raise ValueError(f"config argument {key}={text!r}: expected a {type(default).__name__} "
                     f"like its default {default!r}") from None


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a config argument "key=value,key=value,flag" into the `defaults` it overrides.

  Each value takes its default's type (bool, int, float, str); a bare key sets a boolean to
  True. Items are separated by commas, so values cannot hold one.

  Raises:
    ValueError: an unknown key (the message lists the known ones) or a value of the wrong type.
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, has_value, text = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is unknown; known: {sorted(defaults)}")
    if not has_value:
      if not isinstance(defaults[key], bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
    else:
      out[key] = _convert(key, text.strip(), defaults[key])
  return ml_collections.ConfigDict(out)


def require(args: ml_collections.ConfigDict, config_file: str, *keys: str) -> None:
  """Fails, naming the config file and the argument, when a required argument is empty."""
  missing = [k for k in keys if not args[k]]
  if missing:
    example = ",".join(f"{k}=..." for k in keys)
    raise ValueError(f"{config_file} needs the argument(s) {missing}: "
                     f"--config={config_file}:{example}")


def file_sources(data_dir: str, files: Mapping[str, tuple[str, str]], ext: str
                 ) -> dict[str, dict[str, str]]:
  """`data.sources` of a directory: {name: (task, split)} -> {name: {path, task, split}}
  with path `<data_dir>/<name>.<ext>`; the task applies to records without a "task" field."""
  if ext not in ("jsonl", "parquet"):
    raise ValueError(f"config argument ext={ext!r}; known: 'jsonl', 'parquet'")
  return {name: dict(path=os.path.join(data_dir, f"{name}.{ext}"), task=task, split=split)
          for name, (task, split) in files.items()}


# Memory of the 7B configs, measured by compiling (not running) the steps for v5p chips with
# experiments/aot_compile.py (float32 weights and Adam moments, bfloat16 compute, FSDP over
# all chips; peak per chip of 95.7 GiB):
#   SFT  8 sequences x 2048 tokens, text only,   8 chips:  76.2 GiB  (state 11.8, temp 63.6)
#   SFT  8 x 2048, one 224 px image each,        8 chips:  90.8 GiB
#   SFT  8 x 2048, one 448 px image each,        8 chips:  185 GiB of temporaries: no fit
#   SFT  16 x 2048, text only,                  16 chips:  89.0 GiB  (state 5.9, temp 82.5)
#   RL   8 x 1024 (512 prompt + 512 completion), 8 chips:  78.7 GiB; 79.5 with a 224 px image
#   RL   8 x 2048 (1024 + 1024),                 8 chips:  187 GiB of temporaries: no fit
# So the batch sizes of the configs, which are the recipes', do not fit yet. The runner needs
# first: activation sharding constraints in the model (XLA computes the MLP of the whole batch
# on every chip, which is why 16 chips need more per chip than 8 at one sequence per chip);
# batch sharding in the RL update (its minibatch rows are gathered with a traced
# permutation, after which every chip runs every sequence); a vision tower that does not
# attend densely over all patches of the batch on every chip; rematerialization and
# gradient accumulation.


def qwen2_5_vl_7b(c: ml_collections.ConfigDict, args: ml_collections.ConfigDict) -> None:
  """The model, tokenizer, image, mesh, evaluation and checkpoint settings shared by the
  Qwen2.5-VL-7B configs (args: model, workdir); see the memory note above."""
  c.seed = 0
  c.workdir = args.workdir
  c.resume = True
  # FSDP over every chip: 8.3B parameters with float32 master weights and Adam moments are
  # 99 GB, 3.1 GB per chip of a v5p-64 slice (32 chips) or 12.4 GB per GPU of an 8 x H100
  # node; tensor parallelism would only split activations, which the missing activation
  # constraints (above) leave to XLA anyway. data > 1 only pays across slices.
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.model = dict(
      path=args.model,
      # bfloat16 compute; float32 parameters, because an update of lr 1e-6 on a weight of
      # ~1e-2 is far below bfloat16's resolution there (~1e-4) and would round away.
      dtype="bfloat16",
      param_dtype="float32",
  )
  c.tokenizer = dict(path=args.model)  # Qwen's tokenizer and chat template ship with it
  # Qwen2.5-VL's processor allows up to 1280 merged tokens per image; 256 (448 x 448 px)
  # keeps charts and documents legible and the vision tower's cost bounded (see above).
  c.image = dict(min_pixels=56 * 56, max_pixels=256 * 28 * 28)
  # Greedy decoding on the held-out split; answers with a description and reasoning need
  # room, but evaluation is only a progress check between stages.
  c.eval = dict(examples_per_task=256, batch_size=64, max_new_tokens=1024)
  c.checkpoint = dict(every=50, keep=3)


def shrink_for_smoke(c: ml_collections.ConfigDict) -> None:
  """The `smoke` variant of a 7B config: one step per stage at toy sizes, on CPU, for a tiny
  checkpoint and tiny data files (the tests); batches stay multiples of 8 devices."""
  c.workdir = os.path.join(c.workdir, "smoke")
  c.model.dtype = "float32"  # CPU
  c.image = dict(min_pixels=28 * 28, max_pixels=28 * 28 * 4)
  c.eval = dict(examples_per_task=2, batch_size=8, max_new_tokens=8)
  c.checkpoint = dict(every=1, keep=1)
  c.data.max_length = 128
  c.data.prompt_length_buckets = (96,)
  for name in c.stage_order:
    stage = c.stages[name]
    stage.steps = 1
    stage.optimizer.warmup_steps = 0
    if stage.kind == "sft":
      stage.batch_size = 8
      stage.optimizer.total_steps = 1
      continue
    stage.prompts_per_step = 8
    stage.sampling.group_size = 2
    stage.sampling.max_new_tokens = 8
    stage.learner.num_minibatches = 2
    if stage.get("jailbreak") is not None:
      stage.jailbreak.image_size = 56
