"""Sampling throughput: cosmojax's jitted rollout engine against transformers `generate()`.

    PYTHONPATH=. python benchmarks/rollout_throughput.py [--batch 32] [--new-tokens 64]
        [--group-size 1] [--repeats 3]

Both load the same random small Qwen2.5-VL (text: hidden 256, 4 layers, vocab 4096; vision:
hidden 128, depth 4, 14 px patches merged 2x2), saved by transformers `save_pretrained` into a
temporary directory, and sample the same prompts (one 56x56 image each: a 4x4 patch grid,
4 image tokens; text of varying length, left-padded) on the CPU in float32: temperature 1,
no top-k / top-p, no EOS (every sample gets exactly --new-tokens tokens). Each side is
warmed up once (compilation, allocator), then timed over --repeats calls from prompts to
tokens (M-RoPE positions, vision tower, prefill, decode). torch uses as many threads as the
process has CPUs. With --group-size G each prompt gets G samples (ours: one prefill and one
vision pass per prompt; transformers: `num_return_sequences=G`). Prints the load average
(the figures depend on what else runs on the machine), new tokens per second for both and,
last, `ratio=<ours/theirs>`.

With --floor it also times the text decoder's matmuls alone, at the shapes of one call (the
prefill over [batch * prompt length] rows and one [batch] row block per decoded token, LM
head included; no attention, norms, RoPE, vision tower or sampling), chained in one jitted
`fori_loop`. An engine that runs the same float32 matmuls through XLA:CPU (padding
included) cannot be faster, so transformers' time over this one bounds the ratio here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np

VOCAB = 4096
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = VOCAB - 4, VOCAB - 3, VOCAB - 2, VOCAB - 1
PAD = 0


def hf_config():
  from transformers import Qwen2_5_VLConfig

  text = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
              bos_token_id=None, eos_token_id=None, pad_token_id=PAD,
              rope_parameters={"rope_type": "default", "mrope_section": [8, 12, 12],
                               "rope_theta": 1000000.0})
  vision = dict(depth=4, hidden_size=128, intermediate_size=512, num_heads=2,
                out_hidden_size=256, patch_size=14, temporal_patch_size=2,
                spatial_merge_size=2, window_size=112, fullatt_block_indexes=[3])
  return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN,
                          video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
                          vision_end_token_id=VISION_END, tie_word_embeddings=False)


def make_prompts(batch: int, seed: int = 0):
  """Left-padded ids/mask [B, T], patches [B * 16, 1176], grids [B, 3]: one 56x56 image each."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(batch):
    before, after = rng.integers(4, 12), rng.integers(8, 24)
    rows.append([*rng.integers(8, VOCAB - 8, before), VISION_START, *[IMAGE_TOKEN] * 4,
                 VISION_END, *rng.integers(8, VOCAB - 8, after)])
  t = max(map(len, rows))
  ids = np.full((batch, t), PAD, np.int64)
  mask = np.zeros((batch, t), np.int64)
  for i, row in enumerate(rows):
    ids[i, t - len(row):], mask[i, t - len(row):] = row, 1
  grids = np.tile(np.array([[1, 4, 4]], np.int64), (batch, 1))
  pixels = rng.standard_normal((batch * 16, 3 * 2 * 14 * 14)).astype(np.float32)
  return ids, mask, pixels, grids


def timed(fn, repeats: int) -> float:
  fn()  # warm-up: compilation / first-call allocations
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def run_ours(path, ids, mask, pixels, grids, new_tokens, group_size, repeats) -> float:
  from cosmojax import models, rollout, types

  model = models.from_pretrained(path)
  engine = rollout.JaxRolloutEngine(model, pad_id=PAD, completion_buckets=(new_tokens,))
  batch = types.PromptBatch(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                            image_grid_thw=grids, task_ids=None, example_mask=None)
  config = rollout.SamplingConfig(group_size=group_size, max_new_tokens=new_tokens,
                                  temperature=1.0)
  calls = iter(range(10**6))

  def generate():
    out = engine.generate(batch, jax.random.key(next(calls)), config)
    lengths = np.asarray(jax.block_until_ready(out).lengths)
    assert (lengths == new_tokens).all(), lengths

  seconds = timed(generate, repeats)
  assert engine.num_compilations == 1, engine.compilations
  return seconds


def run_transformers(path, ids, mask, pixels, grids, new_tokens, group_size, repeats) -> float:
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration

  torch.set_num_threads(len(os.sched_getaffinity(0)))
  model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval()
  inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grids),
                mm_token_type_ids=torch.tensor((ids == IMAGE_TOKEN).astype(np.int64)))

  def generate():
    with torch.inference_mode():
      out = model.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           num_return_sequences=group_size, pad_token_id=PAD)
    assert out.shape == (len(ids) * group_size, ids.shape[1] + new_tokens), out.shape

  return timed(generate, repeats)


def matmul_floor(batch: int, prompt_len: int, new_tokens: int, group_size: int,
                 repeats: int) -> float:
  """Seconds for the decoder matmuls of one generate call (see the module docstring)."""
  import jax.numpy as jnp

  text = hf_config().text_config
  d, i, v = text.hidden_size, text.intermediate_size, text.vocab_size
  hd = d // text.num_attention_heads
  q_dim, kv_dim = text.num_attention_heads * hd, text.num_key_value_heads * hd
  rng = np.random.default_rng(0)
  w = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32) * 0.02)
  layers = [dict(q=w(d, q_dim), k=w(d, kv_dim), v=w(d, kv_dim), o=w(q_dim, d), gate=w(d, i),
                 up=w(d, i), down=w(i, d)) for _ in range(text.num_hidden_layers)]
  head = w(d, v)

  def decoder(x):  # [rows, d]: the same matmuls as a decoder layer stack, few elementwise ops
    for p in layers:
      q, k, val = x @ p["q"], x @ p["k"], x @ p["v"]
      x = x + (q + jnp.tile(k + val, (1, q_dim // kv_dim))) @ p["o"]
      x = x + (jax.nn.silu(x @ p["gate"]) * (x @ p["up"])) @ p["down"]
    return x

  def call(x_prompt, x_step):
    x = decoder(x_prompt)  # prefill; the LM head only at the last position
    x_step = x_step + (x[-x_step.shape[0]:] @ head)[:, :d] * 1e-6

    def step(_, x):
      return x + (decoder(x) @ head)[:, :d] * 1e-6

    return jax.lax.fori_loop(0, new_tokens - 1, step, x_step)

  fn = jax.jit(call)
  x_prompt = jnp.ones((batch * prompt_len, d), jnp.float32)
  x_step = jnp.ones((batch * group_size, d), jnp.float32)
  return timed(lambda: jax.block_until_ready(fn(x_prompt, x_step)), repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--new-tokens", type=int, default=64)
  parser.add_argument("--group-size", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--floor", action="store_true",
                      help="also time the decoder's matmuls alone (the ceiling of the ratio)")
  args = parser.parse_args()
  import torch

  torch.manual_seed(0)
  ids, mask, pixels, grids = make_prompts(args.batch)
  with tempfile.TemporaryDirectory() as path:
    from transformers import Qwen2_5_VLForConditionalGeneration

    Qwen2_5_VLForConditionalGeneration(hf_config()).save_pretrained(path)
    load = os.getloadavg()[0]
    run = (path, ids, mask, pixels, grids, args.new_tokens, args.group_size, args.repeats)
    ours = run_ours(*run)
    theirs = run_transformers(*run)
  floor = (matmul_floor(args.batch, ids.shape[1], args.new_tokens, args.group_size,
                        args.repeats) if args.floor else None)
  tokens = args.batch * args.group_size * args.new_tokens
  print(f"device: {jax.devices()[0].platform}, {len(os.sched_getaffinity(0))} CPUs, load "
        f"average {load:.1f} -> {os.getloadavg()[0]:.1f}; {args.batch} prompts (length "
        f"{ids.shape[1]}) x {args.group_size} samples, {args.new_tokens} new tokens each, "
        f"median of {args.repeats} after warm-up")
  print(f"cosmojax JaxRolloutEngine: {tokens / ours:.1f} new tokens/s ({ours:.3f} s)")
  print(f"transformers generate():   {tokens / theirs:.1f} new tokens/s ({theirs:.3f} s)")
  if floor is not None:
    print(f"decoder matmuls alone:     {tokens / floor:.1f} new tokens/s ({floor:.3f} s), "
          f"so the ratio can reach at most {theirs / floor:.2f} here")
  print(f"ratio={theirs / ours:.2f}")


if __name__ == "__main__":
  main()
