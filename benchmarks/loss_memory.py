"""Compiled memory of the PG loss and its gradient: plain reference vs the fused kernel.

    PYTHONPATH=. python benchmarks/loss_memory.py                      # 7B shapes, this platform
    PYTHONPATH=. python benchmarks/loss_memory.py --backend pallas_gpu   # on a GPU
    PYTHONPATH=. python benchmarks/loss_memory.py --topology v5p:2x2x1   # AOT for TPU (libtpu)

Compiles (never runs) loss-and-gradient with respect to the hidden states and the LM head at
Qwen2.5-VL-7B shapes (N = 8 x 1024 tokens, H = 3584, V = 152064, bfloat16), for
`fused_pg_loss_reference` (materializes the logits) and for `fused_pg_loss`, from
`jax.ShapeDtypeStruct`s so nothing is allocated, and prints XLA's temporary buffer sizes
(`compiled.memory_analysis().temp_size_in_bytes`); the last line is `ratio=<fused/reference>`.
On CPU the fused path is the chunked XLA backend; there, with bfloat16 inputs, XLA:CPU
slices a float32 copy of the LM head (it has no bfloat16 dynamic-slice), which dominates the
fused figure (see the note it prints). Note that the memory analysis does not see
inside custom calls: a Pallas kernel's own scratch (VMEM, registers) is not in it, while its
HBM outputs and the XLA temporaries around it are.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
from jax.experimental import topologies
import jax.numpy as jnp

from cosmojax.rl.losses import PolicyLossConfig
from kernels import BlockSizes
from kernels import fused_pg_loss
from kernels import fused_pg_loss_reference
from kernels import resolve_backend


@dataclasses.dataclass(frozen=True)
class Problem:
  """Shapes of one policy-loss step."""

  batch: int = 8
  time: int = 1024
  hidden: int = 3584
  vocab: int = 152064
  objectives: int = 3
  dtype: str = "bfloat16"

  def shapes(self) -> list[tuple[tuple[int, ...], jnp.dtype]]:
    """(shape, dtype) of hidden, lm_head, targets, old_logp, advantages, weights, mask and
    ref_logp."""
    b, t, k = self.batch, self.time, self.objectives
    dt = jnp.dtype(self.dtype)
    return [((b, t, self.hidden), dt), ((self.hidden, self.vocab), dt), ((b, t), jnp.int32),
            ((b, t), jnp.float32), ((b, k), jnp.float32), ((k,), jnp.float32),
            ((b, t), jnp.float32), ((b, t), jnp.float32)]

  def describe(self) -> str:
    return (f"N={self.batch * self.time} (B={self.batch}, T={self.time}) H={self.hidden} "
            f"V={self.vocab} K={self.objectives} dtype={self.dtype}")


def loss_and_grad(fused: bool, config: PolicyLossConfig, backend: str,
                  block_sizes: BlockSizes | None):
  """jit of (h, W, targets, old_logp, adv, weights, mask, ref_logp) -> ((loss, diag), (dh, dW))."""

  def loss(h, w, *rest):
    *rest, ref_logp = rest
    if fused:
      return fused_pg_loss(h, w, *rest, config, ref_logp=ref_logp, backend=backend,
                           block_sizes=block_sizes)
    return fused_pg_loss_reference(h, w, *rest, config, ref_logp=ref_logp)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Arguments shared with loss_speed.py."""
  for field in dataclasses.fields(Problem):
    parser.add_argument(f"--{field.name}", type=type(field.default), default=field.default)
  parser.add_argument("--backend", default="auto",
                      help="fused backend: auto, xla, pallas_gpu, pallas_tpu, ...")
  parser.add_argument("--loss", default="cpgd", help="PolicyLossConfig preset")
  parser.add_argument("--entropy_coef", type=float, default=0.0)
  parser.add_argument("--block_n", type=int, default=None)
  parser.add_argument("--block_v", type=int, default=None)


def parse_common(args) -> tuple[Problem, PolicyLossConfig, BlockSizes | None]:
  problem = Problem(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Problem)})
  config = PolicyLossConfig.preset(args.loss, entropy_coef=args.entropy_coef)
  blocks = None
  if args.block_n or args.block_v:
    default = BlockSizes.get_default(resolve_backend(args.backend)[0])
    blocks = dataclasses.replace(default, block_n=args.block_n or default.block_n,
                                 block_v=args.block_v or default.block_v)
  return problem, config, blocks


def _temp_bytes(fn, problem: Problem, sharding) -> tuple[int, int, int]:
  structs = [jax.ShapeDtypeStruct(s, d, sharding=sharding) for s, d in problem.shapes()]
  analysis = fn.lower(*structs).compile().memory_analysis()
  return (analysis.temp_size_in_bytes, analysis.argument_size_in_bytes,
          analysis.output_size_in_bytes)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_arguments(parser)
  parser.add_argument("--topology", default=None,
                      help="compile ahead of time for a TPU topology, e.g. v5p:2x2x1 (libtpu)")
  args = parser.parse_args()
  problem, config, blocks = parse_common(args)
  sharding, backend = None, args.backend
  if args.topology:
    device = topologies.get_topology_desc(topology_name=args.topology, platform="tpu").devices[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    backend = "pallas_tpu" if backend == "auto" else backend
  print(f"shapes: {problem.describe()} loss={args.loss} fused backend={backend} "
        f"platform={args.topology or jax.default_backend()}")
  sizes = {}
  for name, fused in (("reference", False), (f"fused[{resolve_backend(backend)[0]}]", True)):
    temp, arg_bytes, out_bytes = _temp_bytes(
        loss_and_grad(fused, config, backend, blocks), problem, sharding)
    sizes[name] = temp
    print(f"{name}: temp_size_in_bytes={temp} ({temp / 2**30:.3f} GiB); "
          f"arguments {arg_bytes / 2**30:.3f} GiB, outputs {out_bytes / 2**30:.3f} GiB")
  fused_temp, reference_temp = list(sizes.values())[1], sizes["reference"]
  if not args.topology and jax.default_backend() == "cpu" and problem.dtype == "bfloat16":
    w_f32 = problem.hidden * problem.vocab * 4
    print(f"note: XLA:CPU has no bfloat16 dynamic-slice; it converts the LM head to float32 "
          f"once ({w_f32 / 2**30:.3f} GiB of the fused temporaries), which GPU/TPU do not")
  print(f"ratio={fused_temp / reference_temp:.4f}")


if __name__ == "__main__":
  main()
