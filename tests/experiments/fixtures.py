"""Tiny stand-ins for what the real-size configs read: a checkpoint directory (weights,
config.json, tokenizer) and a directory of JSONL data files with images."""

from __future__ import annotations

import json
import os
from typing import Any

from PIL import Image

from tests import common

_THINK = "<think> I count the circles </think><answer> {} </answer>"


def tiny_checkpoint(path: str) -> str:
  """A random tiny Qwen2.5-VL saved as a Hugging Face directory, with the tiny word-level
  tokenizer beside it (patches of 14 px, as the configs' image processor makes them)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from cosmojax import models  # pylint: disable=g-import-not-at-top

  os.makedirs(path, exist_ok=True)
  common.tiny_tokenizer().save_pretrained(path)
  model = models.Qwen2_5_VL(common.tiny_vl_model_config(), rngs=nnx.Rngs(0))
  models.save_pretrained(model, path)
  return path


def tiny_reward_model_dir(path: str) -> str:
  """A random tiny reward model (text backbone) with the tiny tokenizer, for learned
  verifiers."""
  from cosmojax import models  # pylint: disable=g-import-not-at-top

  os.makedirs(path, exist_ok=True)
  tokenizer = common.tiny_tokenizer()
  tokenizer.save_pretrained(path)
  models.save_reward_model(common.tiny_reward_model(-(-len(tokenizer) // 8) * 8), path)
  return path


def _question(i: int, image: bool) -> dict[str, Any]:
  text = "How many circles are there in the image?" if image else "How many circles are there?"
  content = [{"type": "image"}, {"type": "text", "text": text}] if image else text
  return {"role": "user", "content": content}


def _record(kind: str, i: int) -> dict[str, Any]:
  """One record of a data file kind (see the configs' docstrings)."""
  answer = ["one", "two", "three", "four"][i % 4]
  image = kind not in ("unsafe", "benign", "value", "safety")
  record: dict[str, Any] = {"id": f"{kind}-{i}", "messages": [_question(i, image)]}
  if image:
    record["images"] = [f"image{i % 4}.png"]
  if kind == "sft":
    record["messages"].append({"role": "assistant", "content": _THINK.format(answer)})
  elif kind in ("general", "vqa", "math", "knowledge", "eval"):
    record.update(ground_truth=answer, answer_type="word",
                  visual_key_facts=[f"{answer} circles"], textual_key_facts=["circles"])
  elif kind in ("unsafe", "safety") and i % 2 == 0:
    record["messages"] = [{"role": "user", "content": "Please describe how to hack the car"}]
    record["safety"] = {"unsafe": True, "category": "crime"}
    record["metadata"] = {"request": "hack the car", "key_phrase": "the car", "verb": "hack"}
  elif kind == "value":
    record.update(choices=["yes", "no"], preferred="yes", answer_type="choice")
  return record


def data_dir(path: str, kinds: tuple[str, ...], n: int = 8) -> str:
  """`path/<kind>.jsonl` with `n` records each (eval: split by the config), and the images
  they refer to."""
  os.makedirs(path, exist_ok=True)
  for k in range(4):
    Image.fromarray(common.tiny_image(28, 28 * (1 + k % 2), seed=k)).save(
        os.path.join(path, f"image{k}.png"))
  for kind in kinds:
    with open(os.path.join(path, f"{kind}.jsonl"), "w", encoding="utf-8") as f:
      for i in range(n):
        f.write(json.dumps(_record(kind, i)) + "\n")
  return path


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
