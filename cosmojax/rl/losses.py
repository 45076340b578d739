"""Policy losses from per-token log-probabilities, with vector advantages.

Notation, per response token t of sequence b: l = log pi_theta(y_t), l0 = log pi_old(y_t)
(the policy that sampled), r = exp(l - l0) the importance ratio, A the advantage (the
objectives' advantages combined with their weights, NaN-aware: `objectives.py`), m the mask.

The loss of one step is

    loss = agg(loss_pg) + drift_coef * agg(drift) + kl_coef * agg(kl_ref) - entropy_coef * agg(H)

with `agg` one of the aggregation modes (`aggregate`) and `loss_pg` the per-token loss of
`config.loss_type` (`POLICY_LOSSES`):

- "cpgd" (CPGD): clipped_l = min(l, l0 + ln(1+eps_high)) if A > 0 else
  max(l, l0 + ln(1-eps_low)); loss_pg = -A * clipped_l. Its gradient is -A grad l (no ratio),
  zero once ln(pi/pi_old) leaves the trust band in the direction the advantage pushes.
- "ppo_clip", also "dapo" and "grpo" (the same per-token loss; the algorithms differ in their
  defaults, see `PolicyLossConfig.preset`): loss_pg = max(-A r, -A clip(r, 1-eps_low,
  1+eps_high)); with dual clip c > 1, loss_pg = min(loss_pg, -c A) where A < 0.
- "gspo": the same clipped surrogate on the sequence ratio s_b = exp(mean_t (l - l0)), in its
  token form s_bt = sg(s_b) * pi_theta(y_t) / sg(pi_theta(y_t)) (value s_b, gradient s_b grad l_t):
  with seq-mean-token-mean it is exactly GSPO's sequence objective.
- "pg": the unclipped surrogate loss_pg = -A r (the vanilla policy gradient at r = 1).

Policy drift (CPGD): drift = min(exp(sg(l) - l0) - 1, drift_clip) * l. Its expected gradient
under pi_old is grad KL(pi_old || pi_theta) (clipped), because
E_old[(pi/pi_old - 1) grad l] = sum_y (pi - pi_old) grad log pi = -sum_y pi_old grad log pi.
It is added for every loss type when drift_coef != 0 (presets of other algorithms set 0).

KL to a reference policy pi_ref, x = log pi_ref - l (estimates of KL(pi_theta || pi_ref)):
k1 = -x, k2 = x^2 / 2, k3 = exp(x) - x - 1 (GRPO's unbiased, nonnegative estimator).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from cosmojax.registry import Registry
from cosmojax.rl.objectives import combine_objectives

AGGREGATIONS = (
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"
)
KL_ESTIMATORS = ("k1", "k2", "k3")

# Per-token policy loss: (l, l0, A, mask, config) -> (loss_bt, token flags for diagnostics).
PolicyLossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
POLICY_LOSSES = Registry[PolicyLossFn]("policy loss")


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
  """Static configuration of the policy loss (hashable: pass it as a static jit argument).

  The defaults are CPGD's public ones. `PolicyLossConfig.preset(name)` gives the published
  defaults of each algorithm; note that the drift term applies to every loss type whenever
  drift_coef != 0.

  Attributes:
    loss_type: per-token loss, a name in `POLICY_LOSSES` ("cpgd", "ppo_clip", "dapo", "grpo",
      "gspo", "pg").
    eps_low: lower trust band, ratio >= 1 - eps_low (log-ratio >= ln(1 - eps_low) for CPGD).
    eps_high: upper trust band, ratio <= 1 + eps_high (DAPO's clip-higher uses 0.28).
    dual_clip: None, or c > 1: the loss of a token with A < 0 is capped at -c A.
    drift_coef: weight of CPGD's policy-drift term (0.01 in MM-EUREKA, 0.001 in siiRL).
    drift_clip: upper clip of the drift coefficient exp(l - l0) - 1.
    kl_coef: weight of the KL penalty to the reference policy (needs ref_logp_bt).
    kl_estimator: "k1", "k2" or "k3".
    entropy_coef: weight of the entropy bonus (needs per-token entropies).
    aggregation: one of `AGGREGATIONS`.
    temperature: sampling temperature; logits are divided by it before the log-softmax
      (used where log-probs are computed from logits, e.g. `multiobjective_pg_loss_reference`).
    loss_scale_tokens: the constant token count of "seq-mean-token-sum-norm" (Dr.GRPO's
      generation budget); None uses the padded length T.
    compute_entropy: compute per-token entropies for the diagnostics even when entropy_coef
      is 0 (where entropies are computed from logits).
  """

  loss_type: str = "cpgd"
  eps_low: float = 0.2
  eps_high: float = 0.2
  dual_clip: float | None = None
  drift_coef: float = 0.01
  drift_clip: float = 0.2
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  entropy_coef: float = 0.0
  aggregation: str = "token-mean"
  temperature: float = 1.0
  loss_scale_tokens: int | None = None
  compute_entropy: bool = False

  def __post_init__(self):
    POLICY_LOSSES.get(self.loss_type)  # KeyError naming the known choices.
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"PolicyLossConfig.aggregation {self.aggregation!r}; known: {AGGREGATIONS}.")
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(
          f"PolicyLossConfig.kl_estimator {self.kl_estimator!r}; known: {KL_ESTIMATORS}."
      )
    if not 0.0 <= self.eps_low < 1.0 or self.eps_high < 0.0:
      raise ValueError(
          f"PolicyLossConfig: need 0 <= eps_low < 1 and eps_high >= 0, got eps_low="
          f"{self.eps_low}, eps_high={self.eps_high}."
      )
    if self.dual_clip is not None and not self.dual_clip > 1.0:
      raise ValueError(f"PolicyLossConfig.dual_clip must be None or > 1, got {self.dual_clip}.")
    if self.temperature <= 0.0:
      raise ValueError(f"PolicyLossConfig.temperature must be > 0, got {self.temperature}.")
    if self.loss_scale_tokens is not None and self.loss_scale_tokens <= 0:
      raise ValueError(
          f"PolicyLossConfig.loss_scale_tokens must be None or > 0, got {self.loss_scale_tokens}."
      )

  @property
  def needs_entropy(self) -> bool:
    """Whether per-token entropies are used (bonus or diagnostics)."""
    return self.entropy_coef != 0.0 or self.compute_entropy

  @classmethod
  def preset(cls, name: str, **overrides: Any) -> PolicyLossConfig:
    """The published defaults of an algorithm, with `overrides` applied."""
    if name not in _PRESETS:
      raise KeyError(f"unknown policy loss preset {name!r}; known: {', '.join(sorted(_PRESETS))}")
    return cls(**{**_PRESETS[name], **overrides})


_PRESETS: dict[str, dict[str, Any]] = {
    # CPGD (arXiv 2505.12504): clipped log-ratio PG plus clipped policy drift.
    "cpgd": dict(loss_type="cpgd"),
    # PPO (arXiv 1707.06347): symmetric clip, token-mean.
    "ppo_clip": dict(loss_type="ppo_clip", drift_coef=0.0),
    # DAPO (arXiv 2503.14476): clip-higher (0.2, 0.28) and token-level mean.
    "dapo": dict(loss_type="dapo", eps_high=0.28, drift_coef=0.0),
    # GRPO (arXiv 2402.03300): PPO clip + beta * k3 KL to the reference, 1/G sum 1/|o| sum_t.
    "grpo": dict(
        loss_type="grpo", drift_coef=0.0, kl_coef=0.04, kl_estimator="k3",
        aggregation="seq-mean-token-mean",
    ),
    # GSPO (arXiv 2507.18071): sequence ratio with a narrow band, sequence-level mean.
    "gspo": dict(
        loss_type="gspo", eps_low=3e-4, eps_high=4e-4, drift_coef=0.0,
        aggregation="seq-mean-token-mean",
    ),
    # Dr.GRPO (arXiv 2503.20783): no length normalization; a constant token budget instead.
    "dr_grpo": dict(loss_type="ppo_clip", drift_coef=0.0, aggregation="seq-mean-token-sum-norm"),
    "pg": dict(loss_type="pg", drift_coef=0.0),
}


# ----------------------------------------------------------------------------- aggregation


def aggregate(
    x_bt: jax.Array, mask_bt: jax.Array, mode: str, loss_scale_tokens: int | None = None
) -> jax.Array:
  """Reduces per-token values to a scalar over the valid tokens.

  With n_b = sum_t m_bt and S the set of sequences with n_b > 0:
    token-mean:              sum_bt m x / sum_bt m
    seq-mean-token-mean:     1/|S| sum_{b in S} (sum_t m x) / n_b
    seq-mean-token-sum:      1/|S| sum_{b in S} sum_t m x
    seq-mean-token-sum-norm: 1/|S| sum_{b in S} (sum_t m x) / L,  L = loss_scale_tokens or T
  An all-masked batch gives 0.
  """
  mask = mask_bt.astype(bool)
  x = jnp.where(mask, x_bt, 0.0)
  n_b = jnp.sum(mask, axis=-1).astype(jnp.float32)
  if mode == "token-mean":
    return jnp.sum(x) / jnp.maximum(jnp.sum(n_b), 1.0)
  token_sum_b = jnp.sum(x, axis=-1)
  num_seqs = jnp.maximum(jnp.sum(n_b > 0), 1).astype(jnp.float32)
  if mode == "seq-mean-token-mean":
    return jnp.sum(token_sum_b / jnp.maximum(n_b, 1.0)) / num_seqs
  if mode == "seq-mean-token-sum":
    return jnp.sum(token_sum_b) / num_seqs
  if mode == "seq-mean-token-sum-norm":
    length = loss_scale_tokens if loss_scale_tokens is not None else x_bt.shape[-1]
    return jnp.sum(token_sum_b) / (num_seqs * length)
  raise ValueError(f"unknown aggregation {mode!r}; known: {AGGREGATIONS}.")


def _token_mean(x_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
  return aggregate(x_bt.astype(jnp.float32), mask_bt, "token-mean")


# ------------------------------------------------------------------------ per-token terms


def kl_penalty(logp_bt: jax.Array, ref_logp_bt: jax.Array, estimator: str) -> jax.Array:
  """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta.

  x = log pi_ref - log pi_theta:  k1 = -x,  k2 = x^2 / 2,  k3 = exp(x) - x - 1.
  """
  x = ref_logp_bt - logp_bt
  if estimator == "k1":
    return -x
  if estimator == "k2":
    return 0.5 * jnp.square(x)
  if estimator == "k3":
    return jnp.expm1(x) - x
  raise ValueError(f"unknown KL estimator {estimator!r}; known: {KL_ESTIMATORS}.")


def policy_drift(logp_bt: jax.Array, old_logp_bt: jax.Array, drift_clip: float) -> jax.Array:
  """CPGD's per-token drift: min(exp(sg(l) - l0) - 1, drift_clip) * l.

  d drift / d l = min(pi/pi_old - 1, drift_clip): in expectation under pi_old the gradient of
  KL(pi_old || pi_theta), clipped from above.
  """
  coef = jnp.minimum(jnp.expm1(jax.lax.stop_gradient(logp_bt) - old_logp_bt), drift_clip)
  return coef * logp_bt


def _clipped_surrogate(
    ratio_bt: jax.Array, adv_bt: jax.Array, config: PolicyLossConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO's clipped surrogate with optional dual clip, and which tokens each clip silenced."""
  unclipped = -adv_bt * ratio_bt
  clipped = -adv_bt * jnp.clip(ratio_bt, 1.0 - config.eps_low, 1.0 + config.eps_high)
  loss = jnp.maximum(unclipped, clipped)
  flags = {
      "clipfrac_high": (adv_bt > 0) & (ratio_bt > 1.0 + config.eps_high),
      "clipfrac_low": (adv_bt < 0) & (ratio_bt < 1.0 - config.eps_low),
  }
  if config.dual_clip is not None:
    capped = -adv_bt * config.dual_clip
    flags["dual_clipfrac"] = (adv_bt < 0) & (capped < loss)
    loss = jnp.where(adv_bt < 0, jnp.minimum(loss, capped), loss)
  return loss, flags


@POLICY_LOSSES.register("cpgd")
def cpgd_token_loss(logp_bt, old_logp_bt, adv_bt, mask_bt, config):
  """CPGD: loss = -A * clipped_l,
  clipped_l = min(l, l0 + ln(1+eps_high)) if A > 0 else max(l, l0 + ln(1-eps_low)).
  """
  del mask_bt
  upper = old_logp_bt + math.log1p(config.eps_high)
  lower = old_logp_bt + math.log1p(-config.eps_low)
  above = logp_bt > upper
  below = logp_bt < lower
  clipped_l = jnp.where(
      adv_bt > 0, jnp.where(above, upper, logp_bt), jnp.where(below, lower, logp_bt)
  )
  flags = {"clipfrac_high": (adv_bt > 0) & above, "clipfrac_low": (adv_bt < 0) & below}
  return -adv_bt * clipped_l, flags


@POLICY_LOSSES.register("ppo_clip", "dapo", "grpo")
def ppo_clip_token_loss(logp_bt, old_logp_bt, adv_bt, mask_bt, config):
  """PPO clip: loss = max(-A r, -A clip(r, 1-eps_low, 1+eps_high)), r = exp(l - l0);
  dual clip c: loss = min(loss, -c A) where A < 0.
  """
  del mask_bt
  return _clipped_surrogate(jnp.exp(logp_bt - old_logp_bt), adv_bt, config)


@POLICY_LOSSES.register("gspo")
def gspo_token_loss(logp_bt, old_logp_bt, adv_bt, mask_bt, config):
  """GSPO(-token): s_b = exp(sum_t m (l - l0) / sum_t m), s_bt = sg(s_b) exp(l - sg(l)),
  loss = max(-A s_bt, -A clip(s_bt, 1-eps_low, 1+eps_high)).
  """
  mask = mask_bt.astype(jnp.float32)
  seq_log_ratio_b = jnp.sum(mask * (logp_bt - old_logp_bt), axis=-1) / jnp.maximum(
      jnp.sum(mask, axis=-1), 1.0
  )
  log_ratio_bt = jax.lax.stop_gradient(seq_log_ratio_b)[:, None] + (
      logp_bt - jax.lax.stop_gradient(logp_bt)
  )
  return _clipped_surrogate(jnp.exp(log_ratio_bt), adv_bt, config)


@POLICY_LOSSES.register("pg")
def pg_token_loss(logp_bt, old_logp_bt, adv_bt, mask_bt, config):
  """Vanilla (importance-weighted) policy gradient: loss = -A exp(l - l0)."""
  del mask_bt, config
  never = jnp.zeros(adv_bt.shape, bool)
  return -adv_bt * jnp.exp(logp_bt - old_logp_bt), {"clipfrac_high": never, "clipfrac_low": never}


# -------------------------------------------------------------------------- the contract


def _check_token_inputs(logp_bt, old_logp_bt, advantages_bk, weights_k, mask_bt, optional):
  if logp_bt.ndim != 2:
    raise ValueError(f"logp_bt must be [batch, time], got shape {logp_bt.shape}.")
  for name, x in (("old_logp_bt", old_logp_bt), ("mask_bt", mask_bt), *optional):
    if x is not None and x.shape != logp_bt.shape:
      raise ValueError(f"{name} has shape {x.shape}; expected {logp_bt.shape} like logp_bt.")
  b, t = logp_bt.shape
  if weights_k.ndim != 1:
    raise ValueError(f"weights_k must be [objectives], got shape {weights_k.shape}.")
  k = weights_k.shape[0]
  if advantages_bk.shape not in ((b, k), (b, t, k)):
    raise ValueError(
        f"advantages_bk has shape {advantages_bk.shape}; expected [batch, objectives] = "
        f"{(b, k)} or [batch, time, objectives] = {(b, t, k)}."
    )


def _advantage_diagnostics(advantages, adv_bt, has_bt, mask) -> dict[str, jax.Array]:
  """Token-level statistics of the combined advantage and per-objective statistics."""
  if advantages.ndim == 2:  # [B, K] -> per sequence with at least one valid token.
    unit_mask = jnp.any(mask, axis=-1)[:, None]
  else:  # [B, T, K] -> per valid token.
    unit_mask = mask[..., None]
  present = ~jnp.isnan(advantages) & unit_mask
  n_present = jnp.sum(present, axis=tuple(range(advantages.ndim - 1))).astype(jnp.float32)
  n_units = jnp.maximum(jnp.sum(unit_mask).astype(jnp.float32), 1.0)
  values = jnp.where(present, advantages, 0.0)
  axes = tuple(range(advantages.ndim - 1))
  mean_k = jnp.sum(values, axis=axes) / jnp.maximum(n_present, 1.0)
  sq_k = jnp.sum(jnp.where(present, jnp.square(values - mean_k), 0.0), axis=axes)
  adv_mean = _token_mean(adv_bt, mask)
  return {
      "advantage_mean": adv_mean,
      "advantage_std": jnp.sqrt(_token_mean(jnp.square(adv_bt - adv_mean), mask)),
      "no_objective_fraction": _token_mean(~has_bt, mask),
      "objective_advantage_mean": mean_k,
      "objective_advantage_std": jnp.sqrt(sq_k / jnp.maximum(n_present, 1.0)),
      "objective_present_fraction": n_present / n_units,
  }


@functools.partial(jax.jit, static_argnames=("config",))
def policy_loss_from_logprobs(
    logp_bt: jax.Array,  # [batch, time] log pi_theta of the sampled tokens
    old_logp_bt: jax.Array,  # [batch, time] log pi_old (the sampling policy)
    advantages_bk: jax.Array,  # [batch, objectives] or [batch, time, objectives], NaN = n/a
    weights_k: jax.Array,  # [objectives]
    mask_bt: jax.Array,  # [batch, time] 1 on response tokens that count
    config: PolicyLossConfig,
    *,
    ref_logp_bt: jax.Array | None = None,  # [batch, time] log pi_ref, needed when kl_coef != 0
    entropy_bt: jax.Array | None = None,  # [batch, time] needed when entropy_coef != 0
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The policy loss from per-token log-probs (see the module docstring for the equations).

  A_bt = combine_objectives(advantages, weights) (NaN-aware; broadcast over tokens if [B, K]);
  loss = agg(loss_pg(l, l0, A)) + drift_coef agg(drift) + kl_coef agg(kl(l, l_ref))
         - entropy_coef agg(H).
  Differentiable with respect to logp_bt and entropy_bt; masked positions get zero gradient
  whatever their values.

  Returns:
    (loss, diagnostics): the scalar loss and scalar (or [objectives]) statistics, all
    gradient-free: loss terms, clip fractions, ratio, approximate KL(pi_old || pi_theta),
    drift, KL to the reference, entropy and advantage statistics.
  """
  _check_token_inputs(
      logp_bt, old_logp_bt, advantages_bk, weights_k, mask_bt,
      (("ref_logp_bt", ref_logp_bt), ("entropy_bt", entropy_bt)),
  )
  if config.kl_coef != 0.0 and ref_logp_bt is None:
    raise ValueError(f"kl_coef={config.kl_coef} needs ref_logp_bt (log-probs of the reference).")
  if config.entropy_coef != 0.0 and entropy_bt is None:
    raise ValueError(f"entropy_coef={config.entropy_coef} needs entropy_bt.")
  mask = mask_bt.astype(bool)
  logp = jnp.where(mask, logp_bt.astype(jnp.float32), 0.0)
  old_logp = jnp.where(mask, old_logp_bt.astype(jnp.float32), 0.0)
  adv, has_objective = combine_objectives(advantages_bk, weights_k)
  if adv.ndim == 1:
    adv, has_objective = adv[:, None], has_objective[:, None]
  adv_bt = jnp.broadcast_to(adv, logp.shape)
  has_bt = jnp.broadcast_to(has_objective, logp.shape)

  agg = functools.partial(
      aggregate, mask_bt=mask, mode=config.aggregation, loss_scale_tokens=config.loss_scale_tokens
  )
  pg_bt, flags = POLICY_LOSSES.get(config.loss_type)(logp, old_logp, adv_bt, mask, config)
  pg_loss = agg(pg_bt)
  loss = pg_loss
  diagnostics = {"pg_loss": pg_loss}

  log_ratio = logp - old_logp
  ratio_minus_one = jnp.expm1(log_ratio)
  if config.drift_coef != 0.0:
    drift_loss = agg(policy_drift(logp, old_logp, config.drift_clip))
    loss = loss + config.drift_coef * drift_loss
    diagnostics["drift_loss"] = drift_loss
  if config.kl_coef != 0.0 or ref_logp_bt is not None:
    ref_logp = jnp.where(mask, ref_logp_bt.astype(jnp.float32), 0.0)
    kl_ref = agg(kl_penalty(logp, ref_logp, config.kl_estimator))
    if config.kl_coef != 0.0:
      loss = loss + config.kl_coef * kl_ref
    diagnostics["kl_ref"] = kl_ref
  if entropy_bt is not None:
    entropy = agg(jnp.where(mask, entropy_bt.astype(jnp.float32), 0.0))
    if config.entropy_coef != 0.0:
      loss = loss - config.entropy_coef * entropy
    diagnostics["entropy"] = entropy

  clipped_any = functools.reduce(jnp.logical_or, flags.values(), jnp.zeros_like(mask))
  diagnostics.update(
      loss=loss,
      clipfrac=_token_mean(clipped_any, mask),
      **{name: _token_mean(flag, mask) for name, flag in flags.items()},
      ratio_mean=_token_mean(jnp.exp(log_ratio), mask),
      approx_kl=_token_mean(ratio_minus_one - log_ratio, mask),  # k3 of KL(pi_old || pi_theta)
      drift_mean=_token_mean(jnp.minimum(ratio_minus_one, config.drift_clip), mask),
      drift_clipfrac=_token_mean(ratio_minus_one > config.drift_clip, mask),
      num_tokens=jnp.sum(mask).astype(jnp.float32),
      **_advantage_diagnostics(advantages_bk.astype(jnp.float32), adv_bt, has_bt, mask),
  )
  return loss, jax.lax.stop_gradient(diagnostics)


@functools.partial(jax.jit, static_argnames=("temperature",))
def token_logprobs_reference(
    hidden_btd: jax.Array,  # [batch, time, d_model]
    lm_head_dv: jax.Array,  # [d_model, vocab]
    targets_bt: jax.Array,  # [batch, time] int token ids
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
  """Plain-jnp log-probs and entropies of the sampled tokens (materializes [B, T, V]).

    z = hidden @ lm_head / temperature (float32 accumulation, highest precision),
    logp_bt = log_softmax(z)[targets],  entropy_bt = -sum_v softmax(z)_v log_softmax(z)_v.

  Returns:
    (logp_bt, entropy_bt), float32.  # [batch, time], [batch, time]
  """
  if hidden_btd.ndim != 3 or lm_head_dv.ndim != 2 or hidden_btd.shape[-1] != lm_head_dv.shape[0]:
    raise ValueError(
        f"token_logprobs_reference: hidden_btd {hidden_btd.shape} and lm_head_dv "
        f"{lm_head_dv.shape} must be [batch, time, d] and [d, vocab]."
    )
  if targets_bt.shape != hidden_btd.shape[:2]:
    raise ValueError(f"targets_bt has shape {targets_bt.shape}; expected {hidden_btd.shape[:2]}.")
  logits_btv = jnp.einsum(
      "btd,dv->btv", hidden_btd, lm_head_dv,
      preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST,
  ) / temperature
  logp_btv = jax.nn.log_softmax(logits_btv, axis=-1)
  logp_bt = jnp.take_along_axis(logp_btv, targets_bt[..., None].astype(jnp.int32), axis=-1)[..., 0]
  entropy_bt = -jnp.sum(jnp.exp(logp_btv) * logp_btv, axis=-1)
  return logp_bt, entropy_bt


@functools.partial(jax.jit, static_argnames=("config",))
def multiobjective_pg_loss_reference(
    hidden_btd: jax.Array,  # [batch, time, d_model] final hidden states at response positions
    lm_head_dv: jax.Array,  # [d_model, vocab]
    targets_bt: jax.Array,  # [batch, time] sampled token ids
    old_logp_bt: jax.Array,  # [batch, time]
    advantages_bk: jax.Array,  # [batch, objectives] or [batch, time, objectives]
    weights_k: jax.Array,  # [objectives]
    mask_bt: jax.Array,  # [batch, time]
    config: PolicyLossConfig,
    *,
    ref_logp_bt: jax.Array | None = None,  # [batch, time]
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Reference of the full multiobjective PG loss from hidden states and the LM head.

  logits = hidden @ lm_head / temperature, log-softmax, gather the targets (and entropies
  when `config.needs_entropy`), then `policy_loss_from_logprobs`. Materializes [B, T, V]: the
  fused kernel in kernels/ must match it in value and gradient.
  """
  logp_bt, entropy_bt = token_logprobs_reference(
      hidden_btd, lm_head_dv, targets_bt, config.temperature
  )
  return policy_loss_from_logprobs(
      logp_bt, old_logp_bt, advantages_bk, weights_k, mask_bt, config,
      ref_logp_bt=ref_logp_bt, entropy_bt=entropy_bt if config.needs_entropy else None,
  )
