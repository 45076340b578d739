"""Speed of the PG loss forward + backward: plain reference vs the fused kernel.

    PYTHONPATH=. python benchmarks/loss_speed.py --small                 # CPU-sized shapes
    PYTHONPATH=. python benchmarks/loss_speed.py --backend pallas_gpu    # 7B shapes on a GPU

Times jitted loss-and-gradient (with respect to hidden states and LM head) on random inputs,
median of `--iters` runs after a compile-and-warm-up call, for `fused_pg_loss_reference`
(materializes the logits) and `fused_pg_loss`. Each variant runs in its own subprocess, so
the peak device memory it reports (`device.memory_stats()["peak_bytes_in_use"]`, where the
platform has it; CPU does not) is its own. The last line is `ratio=<fused/reference time>`.
Shapes default to Qwen2.5-VL-7B (N = 8 x 1024, H = 3584, V = 152064, bfloat16); `--small`
uses N = 2 x 512, H = 512, V = 32000.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from loss_memory import Problem  # benchmarks/ is the script's directory
from loss_memory import add_arguments
from loss_memory import loss_and_grad
from loss_memory import parse_common

SMALL = dict(batch=2, time=512, hidden=512, vocab=32000)


def _inputs(problem: Problem, seed: int = 0) -> list[jax.Array]:
  """Random inputs: unit hidden states, LM head scaled to O(1) logits, plausible log-probs."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 8)
  (h_shape, dt), (w_shape, _), (bt, _), *_ = problem.shapes()
  k = problem.objectives
  return [
      jax.random.normal(keys[0], h_shape, dt),
      (jax.random.normal(keys[1], w_shape, jnp.float32) / problem.hidden**0.5).astype(dt),
      jax.random.randint(keys[2], bt, 0, problem.vocab),
      -5.0 + jax.random.normal(keys[3], bt),
      jax.random.normal(keys[4], (problem.batch, k)),
      jnp.ones((k,)),
      jnp.ones(bt),
      -5.0 + jax.random.normal(keys[5], bt),
  ]


def run_variant(args) -> dict:
  """Times one variant in this process; returns its figures."""
  problem, config, blocks = parse_common(args)
  fn = loss_and_grad(args.variant == "fused", config, args.backend, blocks)
  inputs = _inputs(problem)
  start = time.perf_counter()
  jax.block_until_ready(fn(*inputs))
  first = time.perf_counter() - start
  times = []
  for _ in range(args.iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*inputs))
    times.append(time.perf_counter() - start)
  stats = jax.devices()[0].memory_stats() or {}
  return dict(variant=args.variant, seconds=statistics.median(times), first_call=first,
              peak_bytes=stats.get("peak_bytes_in_use"), device=str(jax.devices()[0]))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_arguments(parser)
  parser.add_argument("--small", action="store_true", help=f"shapes {SMALL}")
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--variant", choices=("reference", "fused"), default=None,
                      help="run one variant in this process (the driver passes it)")
  args = parser.parse_args()
  if args.small:
    for name, value in SMALL.items():
      setattr(args, name, value)
  if args.variant:
    print(json.dumps(run_variant(args)))
    return
  argv = [a for a in sys.argv[1:] if a != "--small"]
  argv += [f"--{k}={v}" for k, v in SMALL.items()] if args.small else []
  problem = Problem(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Problem)})
  print(f"shapes: {problem.describe()} loss={args.loss} fused backend={args.backend}")
  seconds = {}
  for variant in ("reference", "fused"):
    proc = subprocess.run([sys.executable, __file__, *argv, f"--variant={variant}"],
                          capture_output=True, text=True)
    if proc.returncode:
      sys.exit(f"the {variant} run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    seconds[variant] = result["seconds"]
    peak = result["peak_bytes"]
    peak_text = f"{peak / 2**30:.3f} GiB" if peak is not None else "not reported"
    print(f"{variant}: {result['seconds'] * 1e3:.1f} ms per forward+backward (median of "
          f"{args.iters}; first call {result['first_call']:.1f} s), peak device memory "
          f"{peak_text}, on {result['device']}")
  print(f"ratio={seconds['fused'] / seconds['reference']:.3f}")


if __name__ == "__main__":
  main()
