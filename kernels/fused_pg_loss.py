"""Fused multiobjective policy-gradient loss from hidden states and the LM head.

The policy loss needs, per response token, only the log-prob of the sampled token (and its
entropy), but the plain computation materializes logits [tokens, vocab] (at Qwen2.5-VL-7B
shapes, 8192 x 152064 floats: 5 GB, several times over in the backward). Here

    loss, diagnostics = policy_loss_from_logprobs(*fused_token_logprobs(h, W, y, T), ...)

where `fused_token_logprobs` computes, tile by tile over tokens and vocabulary with an online
log-sum-exp (`logprob_tiles`),

    z = h W / T,  logp_n = z_{n, y_n} - logsumexp_v z_nv,  H_n = -sum_v p_nv log p_nv,

and its custom VJP turns the per-token cotangents (g_logp, g_H), which autodiff of the cheap
elementwise loss (`cosmojax.rl.losses.policy_loss_from_logprobs`) provides, into
d hidden = dz W^T / T and d lm_head = h^T dz / T by recomputing the logit tiles, with

    dz_nv = g_logp_n (1[v = y_n] - p_nv) - g_H_n p_nv (log p_nv + H_n).

No [tokens, vocab] array is formed in the forward or the backward. Accumulation is float32
whatever the input dtype (bfloat16 hidden states and LM head are the intended use).

Backends (`backend=`):
  "xla"          chunked `lax.fori_loop` over token and vocabulary blocks
                 (`fused_logprobs_xla`); portable, used on CPU.
  "pallas_gpu"   Pallas Triton kernels (`fused_logprobs_pallas_gpu`).
  "pallas_tpu"   Pallas Mosaic kernels (`fused_logprobs_pallas_tpu`).
  "interpret_gpu", "interpret_tpu"  the same kernels in Pallas interpret mode (any platform;
                 slow: for tests). "interpret" is "interpret_gpu".
  "auto"         pallas_gpu on GPU, pallas_tpu on TPU, xla elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from cosmojax.rl.losses import PolicyLossConfig
from cosmojax.rl.losses import multiobjective_pg_loss_reference
from cosmojax.rl.losses import policy_loss_from_logprobs
from cosmojax.rl.losses import token_logprobs_reference
from kernels import fused_logprobs_pallas_gpu
from kernels import fused_logprobs_pallas_tpu
from kernels import fused_logprobs_xla

BACKENDS = ("auto", "xla", "pallas_gpu", "pallas_tpu", "interpret", "interpret_gpu",
            "interpret_tpu")
_PALLAS = {"pallas_gpu": fused_logprobs_pallas_gpu, "pallas_tpu": fused_logprobs_pallas_tpu}


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes of the fused log-prob kernels (hashable: a static argument).

  Attributes:
    block_n: tokens per tile in the forward.
    block_v: vocabulary entries per tile in the forward.
    block_n_bwd: tokens per tile in the backward (None: block_n).
    block_v_bwd: vocabulary entries per tile in the backward (None: block_v).
    block_h: hidden-dimension chunk of the contraction (pallas_gpu only: the Triton kernels
      loop over the hidden dimension; TPU and XLA contract it whole).
    num_warps, num_stages: Triton launch parameters (pallas_gpu only).
    vmem_limit_bytes: Mosaic scoped-VMEM limit (pallas_tpu only; None: the chip's default).
  Pallas GPU tiles must be powers of two (>= 16); Mosaic wants block_n a multiple of 8
  (16 for bfloat16) and block_v of 128.
  """

  block_n: int
  block_v: int
  block_n_bwd: int | None = None
  block_v_bwd: int | None = None
  block_h: int = 64
  num_warps: int | None = None
  num_stages: int | None = None
  vmem_limit_bytes: int | None = None

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is not None and value <= 0:
        raise ValueError(f"BlockSizes.{field.name} must be positive, got {value}.")

  def forward_blocks(self) -> tuple[int, int]:
    return self.block_n, self.block_v

  def backward_blocks(self) -> tuple[int, int]:
    return self.block_n_bwd or self.block_n, self.block_v_bwd or self.block_v

  @classmethod
  def get_default(cls, backend: str) -> BlockSizes:
    """Default tiles of a kernel family ("xla", "pallas_gpu" or "pallas_tpu")."""
    return _DEFAULT_BLOCKS[backend]


_DEFAULT_BLOCKS = {
    # Tiles of 1024 x 4096 floats (16 MB) keep the matmuls large; the backward's float32
    # [H, block_v_bwd] dW accumulator is 29 MB at H = 3584.
    "xla": BlockSizes(block_n=1024, block_v=4096, block_v_bwd=2048),
    # Register tiles of the Triton kernels.
    "pallas_gpu": BlockSizes(block_n=64, block_v=64, block_h=64, num_warps=4, num_stages=2),
    # VMEM: [256, H] + [H, 512] bfloat16 blocks, double-buffered, are 11 MB at H = 3584; the
    # backward also holds a float32 [block_n, H] or [H, block_v] accumulator (19 MB in all at
    # H = 3584, over the 16 MiB default scoped limit: v5e, v5p and v6e have room for 32 MiB).
    # TPU v4 has 16 MiB of VMEM: use BlockSizes(256, 512, 128, 256) there.
    "pallas_tpu": BlockSizes(block_n=256, block_v=512, block_n_bwd=256, block_v_bwd=256,
                             vmem_limit_bytes=32 * 2**20),
}


def resolve_backend(backend: str) -> tuple[str, bool]:
  """Maps a `backend=` value to (kernel family, interpret)."""
  if backend not in BACKENDS:
    raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}.")
  if backend == "auto":
    return {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}.get(jax.default_backend(), "xla"), False
  if backend.startswith("interpret"):
    return ("pallas_tpu" if backend == "interpret_tpu" else "pallas_gpu"), True
  return backend, False


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Static description of one fused log-prob computation."""

  family: str  # "xla", "pallas_gpu" or "pallas_tpu"
  interpret: bool
  block_sizes: BlockSizes
  temperature: float
  with_entropy: bool


def _forward(plan: _Plan, h_nh, w_hv, t_n):
  """(logp, lse, entropy), each [tokens] float32."""
  if plan.family == "xla":
    bn, bv = plan.block_sizes.forward_blocks()
    return fused_logprobs_xla.forward(
        h_nh, w_hv, t_n, temperature=plan.temperature, block_n=bn, block_v=bv)
  outs = _PALLAS[plan.family].forward(
      h_nh, w_hv, t_n[:, None], temperature=plan.temperature, block_sizes=plan.block_sizes,
      interpret=plan.interpret)
  return tuple(x[:, 0] for x in outs)


def _backward(plan: _Plan, h_nh, w_hv, t_n, lse_n, ent_n, g_logp_n, g_ent_n):
  """(d hidden, d lm_head) in the input dtypes."""
  if plan.family == "xla":
    bn, bv = plan.block_sizes.backward_blocks()
    return fused_logprobs_xla.backward(
        h_nh, w_hv, t_n, lse_n, ent_n, g_logp_n, g_ent_n, temperature=plan.temperature,
        block_n=bn, block_v=bv)
  values = [t_n, lse_n, g_logp_n] + ([ent_n, g_ent_n] if ent_n is not None else [])
  return _PALLAS[plan.family].backward(
      h_nh, w_hv, [x[:, None] for x in values], temperature=plan.temperature,
      block_sizes=plan.block_sizes, interpret=plan.interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _token_logprobs(plan: _Plan, h_nh, w_hv, t_n):
  return _token_logprobs_fwd(plan, h_nh, w_hv, t_n)[0]


def _token_logprobs_fwd(plan: _Plan, h_nh, w_hv, t_n):
  logp, lse, ent = _forward(plan, h_nh, w_hv, t_n)
  ent = ent if plan.with_entropy else None
  return (logp, ent), (h_nh, w_hv, t_n, lse, ent)


def _token_logprobs_bwd(plan: _Plan, residuals, cotangents):
  h_nh, w_hv, t_n, lse, ent = residuals
  g_logp, g_ent = cotangents
  g_ent = None if ent is None else g_ent.astype(jnp.float32)
  dh, dw = _backward(plan, h_nh, w_hv, t_n, lse, ent, g_logp.astype(jnp.float32), g_ent)
  return dh, dw, None


_token_logprobs.defvjp(_token_logprobs_fwd, _token_logprobs_bwd)


def _check_logprob_inputs(fn: str, hidden, lm_head, targets) -> None:
  if hidden.ndim not in (2, 3):
    raise ValueError(
        f"{fn}: hidden must be [tokens, d_model] or [batch, time, d_model], got shape "
        f"{hidden.shape}.")
  if lm_head.ndim != 2 or lm_head.shape[0] != hidden.shape[-1]:
    raise ValueError(
        f"{fn}: lm_head must be [d_model, vocab] with d_model = {hidden.shape[-1]} (the last "
        f"axis of hidden), got shape {lm_head.shape}.")
  if not jnp.issubdtype(hidden.dtype, jnp.floating) or hidden.dtype != lm_head.dtype:
    raise ValueError(
        f"{fn}: hidden and lm_head must share one floating dtype, got {hidden.dtype} and "
        f"{lm_head.dtype}.")
  if targets.shape != hidden.shape[:-1]:
    raise ValueError(
        f"{fn}: targets has shape {targets.shape}; expected {hidden.shape[:-1]} (hidden's "
        "leading axes).")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"{fn}: targets must hold integer token ids, got dtype {targets.dtype}.")


def _plan(backend: str, block_sizes: BlockSizes | None, temperature: float,
          with_entropy: bool) -> _Plan:
  family, interpret = resolve_backend(backend)
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
  return _Plan(family, interpret, block_sizes or BlockSizes.get_default(family),
               float(temperature), with_entropy)


def _flat_logprobs(plan: _Plan, hidden, lm_head, targets):
  """Runs the fused op on hidden [..., d] and returns (logp, entropy | None) shaped [...]."""
  lead = hidden.shape[:-1]
  logp, ent = _token_logprobs(
      plan, hidden.reshape(-1, hidden.shape[-1]), lm_head, targets.reshape(-1).astype(jnp.int32))
  return logp.reshape(lead), None if ent is None else ent.reshape(lead)


@functools.partial(
    jax.jit, static_argnames=("temperature", "with_entropy", "backend", "block_sizes"))
def fused_token_logprobs(
    hidden: jax.Array,  # [tokens, d_model] or [batch, time, d_model]
    lm_head: jax.Array,  # [d_model, vocab]
    targets: jax.Array,  # [tokens] or [batch, time] int token ids in [0, vocab)
    *,
    temperature: float = 1.0,
    with_entropy: bool = True,
    backend: str = "auto",
    block_sizes: BlockSizes | None = None,
) -> tuple[jax.Array, jax.Array | None]:
  """Log-probs (and entropies) of the target tokens without materializing the logits.

    z = hidden @ lm_head / temperature,  logp = log_softmax(z)[targets],
    entropy = -sum_v softmax(z)_v log_softmax(z)_v.

  Differentiable with respect to hidden and lm_head (custom VJP recomputing logit tiles).

  Returns:
    (logp, entropy) float32, shaped like targets; entropy is None unless with_entropy.
  """
  _check_logprob_inputs("fused_token_logprobs", hidden, lm_head, targets)
  plan = _plan(backend, block_sizes, temperature, with_entropy)
  return _flat_logprobs(plan, hidden, lm_head, targets)


def _as_batch(hidden, per_token: dict[str, Any], advantages):
  """Views flat [tokens, ...] inputs as one sequence [1, tokens, ...] for the loss."""
  if hidden.ndim == 3:
    return per_token, advantages
  if advantages.ndim != 2 or advantages.shape[0] != hidden.shape[0]:
    raise ValueError(
        f"fused_pg_loss: with flat hidden [tokens, d_model] = {hidden.shape}, advantages must "
        f"be [tokens, objectives], got shape {advantages.shape}.")
  return {k: None if x is None else x[None] for k, x in per_token.items()}, advantages[None]


def _check_loss_inputs(hidden, per_token: dict[str, Any]) -> None:
  for name, x in per_token.items():
    if x is not None and x.shape != hidden.shape[:-1]:
      raise ValueError(
          f"fused_pg_loss: {name} has shape {x.shape}; expected {hidden.shape[:-1]} (hidden's "
          "leading axes).")


@functools.partial(jax.jit, static_argnames=("config", "backend", "block_sizes"))
def fused_pg_loss(
    hidden: jax.Array,  # [batch, time, d_model] or [tokens, d_model]
    lm_head: jax.Array,  # [d_model, vocab]
    targets: jax.Array,  # [batch, time] or [tokens] sampled token ids
    old_logp: jax.Array,  # [batch, time] or [tokens] log pi_old of the targets
    advantages: jax.Array,  # [batch, K] or [batch, time, K]; flat: [tokens, K]; NaN = n/a
    weights: jax.Array,  # [K]
    mask: jax.Array,  # [batch, time] or [tokens], 1 on tokens that count
    config: PolicyLossConfig,
    *,
    ref_logp: jax.Array | None = None,  # [batch, time] or [tokens], when config.kl_coef != 0
    backend: str = "auto",
    block_sizes: BlockSizes | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The multiobjective policy-gradient loss with the LM head fused in (module docstring).

  Equal in value, diagnostics and gradients to
  `cosmojax.rl.losses.multiobjective_pg_loss_reference`: logp and (when
  `config.needs_entropy`) entropies come from `fused_token_logprobs` at
  `config.temperature`, then `policy_loss_from_logprobs` applies `config` (CPGD, PPO-clip,
  DAPO, GRPO, GSPO, ...: loss type, eps_low/eps_high, drift, KL, entropy, aggregation).
  Flat [tokens, ...] inputs are one sequence of tokens, with per-token advantages.

  Returns:
    (loss, diagnostics): the scalar loss and the reference's diagnostics.
  """
  _check_logprob_inputs("fused_pg_loss", hidden, lm_head, targets)
  per_token = {"old_logp": old_logp, "mask": mask, "ref_logp": ref_logp}
  _check_loss_inputs(hidden, per_token)
  plan = _plan(backend, block_sizes, config.temperature, config.needs_entropy)
  logp, entropy = _flat_logprobs(plan, hidden, lm_head, targets)
  per_token, advantages = _as_batch(
      hidden, dict(logp=logp, entropy=entropy, **per_token), advantages)
  return policy_loss_from_logprobs(
      per_token["logp"], per_token["old_logp"], advantages, weights, per_token["mask"], config,
      ref_logp_bt=per_token["ref_logp"], entropy_bt=per_token["entropy"])


# ---------------------------------------------------------------------------- references


def fused_token_logprobs_reference(
    hidden: jax.Array,  # [tokens, d_model] or [batch, time, d_model]
    lm_head: jax.Array,  # [d_model, vocab]
    targets: jax.Array,  # [tokens] or [batch, time]
    *,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
  """Plain-jnp (logp, entropy) shaped like targets: materializes the logits."""
  _check_logprob_inputs("fused_token_logprobs_reference", hidden, lm_head, targets)
  if hidden.ndim == 2:
    logp, ent = token_logprobs_reference(hidden[None], lm_head, targets[None], temperature)
    return logp[0], ent[0]
  return token_logprobs_reference(hidden, lm_head, targets, temperature)


def fused_pg_loss_reference(
    hidden, lm_head, targets, old_logp, advantages, weights, mask, config: PolicyLossConfig,
    *, ref_logp=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Plain-jnp `fused_pg_loss` (same arguments, no backend): materializes the logits."""
  _check_logprob_inputs("fused_pg_loss_reference", hidden, lm_head, targets)
  if hidden.ndim == 2:
    per_token = {"old_logp": old_logp, "mask": mask, "ref_logp": ref_logp}
    _check_loss_inputs(hidden, per_token)
    per_token, advantages = _as_batch(
        hidden, dict(hidden=hidden, targets=targets, **per_token), advantages)
    # _as_batch gave hidden a leading axis as well: [1, tokens, d_model].
    hidden, targets = per_token["hidden"], per_token["targets"]
    old_logp, mask, ref_logp = per_token["old_logp"], per_token["mask"], per_token["ref_logp"]
  return multiobjective_pg_loss_reference(
      hidden, lm_head, targets, old_logp, advantages, weights, mask, config,
      ref_logp_bt=ref_logp)
