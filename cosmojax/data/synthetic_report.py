r"""Prints what the synthetic suite holds and saves one rendered sample per task.

    python -m cosmojax.data.synthetic_report --out /tmp/suite_report [--per_task 64]

For every task: safety label, answer type, how many distinct split keys a sample of
`--per_task` examples per split reaches in train and eval, the longest prompt and target (in
vocabulary units), and the SFT mixture's count. Saves `<task>.png` (the sample's images
enlarged, its prompt and target below) and `augment_<kind>.png` (a harmful request through
each jailbreak transform) into --out, and the printed report as report.txt.
"""

from __future__ import annotations

import argparse
import os
import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from cosmojax import types
from cosmojax.data import jailbreak
from cosmojax.data import synthetic
from cosmojax.data import synthetic_images as si
from cosmojax.data import synthetic_safety


def sample_card(example: types.Example, scale: int = 3, width_chars: int = 60) -> np.ndarray:
  """The example's images enlarged side by side, its prompt and target as text below."""
  images = [np.asarray(Image.fromarray(im).resize((im.shape[1] * scale, im.shape[0] * scale),
                                                  Image.NEAREST)) for im in example.images]
  lines = [f"[{example.task}] {example.id}"]
  lines += textwrap.wrap("user: " + example.prompt_text, width_chars)
  lines += textwrap.wrap("assistant: " + (example.target or ""), width_chars)
  font = si.font(12)
  line_h = sum(font.getmetrics()) + 2
  text_w = int(max(font.getlength(line) for line in lines)) + 8
  strip_w = sum(im.shape[1] + 4 for im in images)
  strip_h = max((im.shape[0] for im in images), default=0)
  card = Image.new("RGB", (max(text_w, strip_w), strip_h + 8 + line_h * len(lines)), "white")
  x = 0
  for im in images:
    card.paste(Image.fromarray(im), (x, 0))
    x += im.shape[1] + 4
  draw = ImageDraw.Draw(card)
  for i, line in enumerate(lines):
    draw.text((4, strip_h + 4 + i * line_h), line, font=font, fill=(0, 0, 0))
  return np.asarray(card)


def report(out_dir: str, per_task: int = 64, config: synthetic.SuiteConfig = synthetic.SuiteConfig(),
           mix: synthetic.SFTMixConfig = synthetic.SFTMixConfig()) -> str:
  """Writes the PNGs and report.txt into out_dir; returns the report text."""
  os.makedirs(out_dir, exist_ok=True)
  sft_counts = mix.task_counts()
  lines = [f"cosmojax synthetic suite: seed {config.seed}, images {config.image_size}px, "
           f"eval fraction of split keys {config.eval_fraction}",
           f"(keys: distinct split keys among {per_task} sampled examples per split; "
           f"prompt/target: longest, in vocabulary units; sft: examples in the SFT mixture)",
           f"{'task':24} {'unsafe':6} {'attack':20} {'answer':7} {'keys tr/ev':>10} "
           f"{'prompt':>6} {'target':>6} {'sft':>5}"]
  for task in synthetic.TASK_NAMES:
    split_examples = {s: synthetic.generate(task, s, per_task, config) for s in synthetic.SPLITS}
    examples = [e for s in synthetic.SPLITS for e in split_examples[s]]
    keys = {s: len({e.metadata["split_key"] for e in split_examples[s]}) for s in synthetic.SPLITS}
    stats = synthetic.suite_stats(examples)[task]
    first = examples[0]
    attacks = ",".join(sorted({e.safety.attack for e in examples})) or "-"
    lines.append(
        f"{task:24} {stats['unsafe']:6.2f} {attacks:20} {first.answer_type or '-':7} "
        f"{keys['train']:>4}/{keys['eval']:<5} {stats['prompt_max']:>6} "
        f"{stats['target_max']:>6} {sft_counts[task]:>5}")
    with_image = next((e for e in examples if e.images), first)
    Image.fromarray(sample_card(with_image)).save(os.path.join(out_dir, f"{task}.png"))
  lines.append(f"SFT set: {sum(sft_counts.values())} examples ({mix})")
  harmful = next(e for e in synthetic.generate("harmful_text", "train", 32, config) if not e.images)
  rates = {"typographic": (1, 0, 0), "query_relevant_image": (0, 1, 0), "split_intent": (0, 0, 1)}
  for kind, (t, q, s) in rates.items():
    jb = jailbreak.JailbreakConfig(typographic_rate=t, query_image_rate=q, split_intent_rate=s,
                                   image_size=config.image_size, seed=config.seed)
    augmented = jailbreak.augment_jailbreak(harmful, jb, target_fn=synthetic_safety.safety_target)
    Image.fromarray(sample_card(augmented)).save(os.path.join(out_dir, f"augment_{kind}.png"))
  lines.append(f"PNGs written to {out_dir}")
  text = "\n".join(lines)
  with open(os.path.join(out_dir, "report.txt"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  return text


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="directory for the PNGs and report.txt")
  parser.add_argument("--per_task", type=int, default=64, help="examples per task and split")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--image_size", type=int, default=84)
  args = parser.parse_args(argv)
  config = synthetic.SuiteConfig(seed=args.seed, image_size=args.image_size)
  print(report(args.out, args.per_task, config))


if __name__ == "__main__":
  main()
