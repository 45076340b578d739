"""Fused PG loss: every backend against the plain-jnp reference, values and gradients.

`TestFusedPgLoss` runs the compiled paths of this platform (the chunked XLA path always, the
Pallas kernels on GPU/TPU); its subclass `TestFusedPgLossInterpret` runs both Pallas kernel
families in interpret mode, so CPU runs check the kernels too (STYLE.md item 10). The
reference is `cosmojax.rl.losses.multiobjective_pg_loss_reference`, which materializes the
logits.

Tolerances, as max |fused - reference| / max |reference| over each array:
float32 1e-5; bfloat16 inputs 1e-5 for log-probs and entropies (both sides accumulate the
same bfloat16 products in float32) and 1e-2 for the bfloat16 gradients (bfloat16 has an 8-bit
mantissa, relative spacing 2^-8 = 3.9e-3, and the kernels round d logits to bfloat16 before
the backward matmuls, as bfloat16 training does; observed: 3.4e-3 to 4.4e-3).

Shapes are tiny (Pallas interpret mode is slow on CPU), chosen so that tokens, vocabulary
and hidden size are not multiples of the block sizes.
"""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosmojax.rl.losses import PolicyLossConfig
from kernels import BlockSizes
from kernels import fused_pg_loss
from kernels import fused_pg_loss_reference
from kernels import fused_token_logprobs
from kernels import fused_token_logprobs_reference
from kernels import resolve_backend

# Small tiles so that the shapes below span several partial blocks.
_TEST_BLOCKS = {
    "xla": BlockSizes(block_n=8, block_v=64, block_n_bwd=16, block_v_bwd=48),
    "pallas_gpu": BlockSizes(block_n=16, block_v=64, block_h=16, num_warps=4, num_stages=1),
    "pallas_tpu": BlockSizes(block_n=16, block_v=128),
}
_F32_TOL = 1e-5
_BF16_GRAD_TOL = 1e-2


def _blocks(backend: str) -> BlockSizes:
  return _TEST_BLOCKS[resolve_backend(backend)[0]]


def _assert_close(actual, expected, tol, name=""):
  actual = np.asarray(jnp.asarray(actual, jnp.float32))
  expected = np.asarray(jnp.asarray(expected, jnp.float32))
  assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
  err = np.max(np.abs(actual - expected)) if actual.size else 0.0
  scale = max(np.max(np.abs(expected)) if expected.size else 0.0, 1e-6)
  assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol} * {scale:.3g}"


def _problem(n_lead, hdim, vocab, dtype, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  hidden = jax.random.normal(keys[0], (*n_lead, hdim), jnp.float32).astype(dtype)
  lm_head = (jax.random.normal(keys[1], (hdim, vocab), jnp.float32) / np.sqrt(hdim) * 3.0)
  targets = jax.random.randint(keys[2], n_lead, 0, vocab)
  return hidden, lm_head.astype(dtype), targets


def _logprob_vjp(fn, hidden, lm_head, targets, seed=1):
  """(logp, entropy, d hidden, d lm_head) for random cotangents of logp and entropy."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 2)
  g_logp = jax.random.normal(keys[0], targets.shape)
  g_ent = jax.random.normal(keys[1], targets.shape)

  def scalar(h, w):
    logp, ent = fn(h, w, targets)
    return jnp.sum(logp * g_logp) + jnp.sum(ent * g_ent), (logp, ent)

  (_, (logp, ent)), (dh, dw) = jax.jit(
      jax.value_and_grad(scalar, argnums=(0, 1), has_aux=True))(hidden, lm_head)
  return logp, ent, dh, dw


# (leading shape, hidden, vocab, dtype): sizes that are not multiples of the test blocks,
# fewer tokens than one block, and exact multiples.
_TOKEN_CASES = {
    "ragged-f32": ((37,), 24, 203, jnp.float32),
    "ragged-bf16": ((37,), 24, 203, jnp.bfloat16),
    "tiny-f32": ((2, 3), 16, 50, jnp.float32),
    "multiples-bf16": ((4, 8), 16, 256, jnp.bfloat16),
}
_TEMPERATURE = 0.7


@functools.cache
def _token_reference(case: str):
  """Reference (logp, entropy, d hidden, d lm_head) of a token case, computed once."""
  n_lead, hdim, vocab, dtype = _TOKEN_CASES[case]
  return _logprob_vjp(
      lambda h, w, t: fused_token_logprobs_reference(h, w, t, temperature=_TEMPERATURE),
      *_problem(n_lead, hdim, vocab, dtype))


# Per-loss-type configurations (every registered loss type; the presets' published defaults
# plus the optional terms) and the number of objectives K, cycling over 1..4.
_LOSS_CASES = [
    (PolicyLossConfig.preset("cpgd", entropy_coef=0.01), 1),
    (PolicyLossConfig.preset("ppo_clip", dual_clip=3.0, temperature=0.7), 2),
    (PolicyLossConfig.preset("dapo", compute_entropy=True), 3),
    (PolicyLossConfig.preset("grpo"), 4),
    (PolicyLossConfig.preset("gspo", eps_low=0.05, eps_high=0.08), 2),
    (PolicyLossConfig.preset("dr_grpo", kl_coef=0.1, kl_estimator="k2"), 3),
    (PolicyLossConfig.preset("pg", aggregation="seq-mean-token-sum"), 1),
]
_LOSS_IDS = ["cpgd", "ppo_clip", "dapo", "grpo", "gspo", "dr_grpo", "pg"]


def _loss_problem(config, k, dtype, batch=3, time=11, hdim=24, vocab=203, per_token_adv=False):
  hidden, lm_head, targets = _problem((batch, time), hdim, vocab, dtype, seed=k)
  keys = jax.random.split(jax.random.PRNGKey(100 + k), 5)
  logp, _ = fused_token_logprobs_reference(
      hidden.astype(jnp.float32), lm_head.astype(jnp.float32), targets)
  old_logp = logp + 0.3 * jax.random.normal(keys[0], logp.shape)
  ref_logp = logp + 0.3 * jax.random.normal(keys[1], logp.shape)
  adv_shape = (batch, time, k) if per_token_adv else (batch, k)
  advantages = jax.random.normal(keys[2], adv_shape)
  if k > 1:  # one objective that does not apply to one sample
    advantages = advantages.at[0, ..., k - 1].set(jnp.nan)
  weights = jax.random.uniform(keys[3], (k,), minval=0.5, maxval=1.5)
  lengths = jnp.array([time, 0, time // 2])[:batch]  # the middle row is fully masked
  mask = (jnp.arange(time)[None, :] < lengths[:, None]).astype(jnp.float32)
  return (hidden, lm_head, targets, old_logp, advantages, weights, mask), ref_logp


def _loss_and_grads(fn, args, config, ref_logp):
  def loss(h, w):
    return fn(h, w, *args[2:], config, ref_logp=ref_logp)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(*args[:2])


@functools.cache
def _loss_reference(case: int):
  """Reference ((loss, diagnostics), grads) of a loss case, computed once for all backends."""
  config, k = _LOSS_CASES[case]
  args, ref_logp = _loss_problem(config, k, jnp.float32, per_token_adv=k == 3)
  return _loss_and_grads(fused_pg_loss_reference, args, config, ref_logp)


def _bf16_problem():
  """One sequence of 37 tokens with bfloat16 inputs and per-token advantages."""
  config = PolicyLossConfig.preset("cpgd", entropy_coef=0.01)
  args, _ = _loss_problem(config, 2, jnp.bfloat16, batch=1, time=37, per_token_adv=True)
  return args, config


@functools.cache
def _bf16_reference():
  args, config = _bf16_problem()
  return _loss_and_grads(fused_pg_loss_reference, args, config, None)


class TestFusedPgLoss:
  """Compiled backends of this platform."""

  @staticmethod
  def backends() -> list[str]:
    native = {"gpu": ["pallas_gpu"], "tpu": ["pallas_tpu"]}.get(jax.default_backend(), [])
    return ["xla"] + native

  @pytest.mark.parametrize("case", list(_TOKEN_CASES))
  def test_token_logprobs_match_reference(self, backend, case):
    n_lead, hdim, vocab, dtype = _TOKEN_CASES[case]
    hidden, lm_head, targets = _problem(n_lead, hdim, vocab, dtype)
    expected = _token_reference(case)
    actual = _logprob_vjp(
        lambda h, w, t: fused_token_logprobs(
            h, w, t, temperature=_TEMPERATURE, backend=backend, block_sizes=_blocks(backend)),
        hidden, lm_head, targets)
    grad_tol = _F32_TOL if dtype == jnp.float32 else _BF16_GRAD_TOL
    for name, a, e, tol in zip(("logp", "entropy", "d_hidden", "d_lm_head"), actual, expected,
                               (_F32_TOL, _F32_TOL, grad_tol, grad_tol)):
      assert a.dtype == e.dtype, (name, a.dtype, e.dtype)
      _assert_close(a, e, tol, name)

  @pytest.mark.parametrize("case", range(len(_LOSS_CASES)), ids=_LOSS_IDS)
  def test_pg_loss_matches_reference(self, backend, case):
    config, k = _LOSS_CASES[case]
    args, ref_logp = _loss_problem(config, k, jnp.float32, per_token_adv=k == 3)
    (loss_e, diag_e), grads_e = _loss_reference(case)
    fused = lambda *a, **kw: fused_pg_loss(*a, backend=backend, block_sizes=_blocks(backend), **kw)
    (loss_a, diag_a), grads_a = _loss_and_grads(fused, args, config, ref_logp)
    _assert_close(loss_a, loss_e, _F32_TOL, "loss")
    assert sorted(diag_a) == sorted(diag_e)
    for name in diag_e:
      _assert_close(diag_a[name], diag_e[name], _F32_TOL, name)
    assert float(jnp.max(jnp.abs(grads_e[0][1]))) == 0.0  # the masked row has no gradient
    for name, a, e in zip(("d_hidden", "d_lm_head"), grads_a, grads_e):
      _assert_close(a, e, _F32_TOL, name)

  def test_bf16_pg_loss_and_flat_tokens(self, backend):
    args, config = _bf16_problem()
    flat = [args[0][0], args[1], *(x[0] for x in args[2:5]), args[5], args[6][0]]
    (loss_e, diag_e), grads_e = _bf16_reference()
    fused = lambda *a, **kw: fused_pg_loss(*a, backend=backend, block_sizes=_blocks(backend), **kw)
    (loss_a, diag_a), grads_a = _loss_and_grads(fused, flat, config, None)
    _assert_close(loss_a, loss_e, _F32_TOL, "loss")
    _assert_close(diag_a["entropy"], diag_e["entropy"], _F32_TOL, "entropy")
    _assert_close(grads_a[0], grads_e[0][0], _BF16_GRAD_TOL, "d_hidden")
    _assert_close(grads_a[1], grads_e[1], _BF16_GRAD_TOL, "d_lm_head")


class TestFusedPgLossInterpret(TestFusedPgLoss):
  """Both Pallas kernel families in interpret mode (runs on CPU)."""

  @staticmethod
  def backends() -> list[str]:
    return ["interpret_gpu", "interpret_tpu"]


def pytest_generate_tests(metafunc):
  """Parametrizes each test class's `backend` argument with the class's backends."""
  if "backend" in metafunc.fixturenames:
    metafunc.parametrize("backend", metafunc.cls.backends())


def test_auto_backend_and_unknown_backend():
  expected = {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}.get(jax.default_backend(), "xla")
  assert resolve_backend("auto") == (expected, False)
  assert resolve_backend("interpret") == ("pallas_gpu", True)
  with pytest.raises(ValueError, match="unknown backend 'cuda'; known: auto, xla"):
    resolve_backend("cuda")


@pytest.mark.parametrize(
    "name,shape,dtype,message",
    [
        ("lm_head", (8, 50), jnp.float32, r"lm_head must be \[d_model, vocab\] with d_model = 16"),
        ("targets", (2, 4), jnp.int32, r"targets has shape \(2, 4\); expected \(2, 3\)"),
        ("targets", (2, 3), jnp.float32, "targets must hold integer token ids"),
        ("hidden", (2, 3, 16), jnp.bfloat16, "share one floating dtype"),
        ("hidden", (16,), jnp.float32, r"hidden must be \[tokens, d_model\] or \[batch, time"),
        ("mask", (2, 4), jnp.float32, r"mask has shape \(2, 4\); expected \(2, 3\)"),
    ],
)
def test_bad_shapes_are_named(name, shape, dtype, message):
  inputs = dict(hidden=((2, 3, 16), jnp.float32), lm_head=((16, 50), jnp.float32),
                targets=((2, 3), jnp.int32), mask=((2, 3), jnp.float32))
  inputs[name] = (shape, dtype)
  x = {key: jnp.zeros(*value) for key, value in inputs.items()}
  with pytest.raises(ValueError, match=message):
    fused_pg_loss(x["hidden"], x["lm_head"], x["targets"], jnp.zeros((2, 3)), jnp.zeros((2, 1)),
                  jnp.ones((1,)), x["mask"], PolicyLossConfig(), backend="xla")


def test_xla_path_never_materializes_logits():
  """Compiled loss-and-gradient temporaries stay far below one float32 [N, V] logits array."""
  n, hdim, vocab = 2048, 64, 16384
  config = PolicyLossConfig.preset("cpgd", entropy_coef=0.01)
  shapes = [((n, hdim), jnp.bfloat16), ((hdim, vocab), jnp.bfloat16), ((n,), jnp.int32),
            ((n,), jnp.float32), ((n, 2), jnp.float32), ((2,), jnp.float32), ((n,), jnp.float32)]
  args = [jax.ShapeDtypeStruct(s, d) for s, d in shapes]
  blocks = BlockSizes(block_n=256, block_v=1024)

  def loss(h, w, *rest):
    return fused_pg_loss(h, w, *rest, config, backend="xla", block_sizes=blocks)[0]

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  logits_bytes = n * vocab * 4  # 134 MB
  assert temp < 0.1 * logits_bytes, f"temporaries {temp} bytes vs logits {logits_bytes} bytes"


@pytest.mark.parametrize(
    "script", ["loss_memory.py", pytest.param("loss_speed.py", marks=pytest.mark.slow)])
def test_benchmark_scripts_print_a_ratio(script):
  """The benchmarks run end to end (tiny shapes) and end with their ratio line."""
  root = pathlib.Path(__file__).resolve().parents[2]
  tiny = ["--batch=2", "--time=16", "--hidden=32", "--vocab=300", "--block_n=8", "--block_v=64"]
  extra = ["--iters=1"] if script == "loss_speed.py" else []
  env = dict(os.environ, PYTHONPATH=str(root))
  proc = subprocess.run([sys.executable, str(root / "benchmarks" / script), *tiny, *extra],
                        capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  last = proc.stdout.strip().splitlines()[-1]
  assert last.startswith("ratio=") and float(last.split("=")[1]) > 0, proc.stdout
