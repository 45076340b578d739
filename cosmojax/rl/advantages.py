"""Advantage estimators for vector rewards R[N, K].

N samples, G per prompt (group ids [N] in [0, num_groups), or contiguous groups of size G via
`contiguous_group_ids`), K named objectives, NaN where an objective does not apply to a sample.
Every statistic below is NaN-aware: a missing objective is left out of its group's statistics,
and its advantage stays NaN (the loss leaves it out of the weighted sum, `objectives.py`).

Per objective k and group g, over the samples where R[:, k] is present:
n_g the count, mean_g the mean, std_g the standard deviation (`ddof`, torch's default 1;
0 when n_g <= ddof). A group "has variance" when its max and min differ; in a group without
variance every estimator gives exactly 0 (no float residue of r - mean_g / eps), and so does a
single-sample group.

Estimators (`ADVANTAGE_ESTIMATORS`, chosen by `AdvantageConfig.estimator`):
- "grpo" = "cpgd_std":  A = (r - mean_g) / (std_g + eps)
- "dr_grpo" = "cpgd_naive":  A = r - mean_g
- "rloo":  A = r - mean_{g without r} = n_g / (n_g - 1) (r - mean_g)
- "cpgd_clip_filter_like":  A = (r - mean_g) min(#groups / #groups with variance, c), c = 3
- "reinforce_pp":  A = (r - mean_B) / (std_B + eps), whitening over the whole batch
- "reinforce_pp_baseline":  c = r - mean_g, then A = (c - mean_B(c)) / (std_B(c) + eps)
(`reinforce_pp_token_advantages` is REINFORCE++ with a token-level KL penalty in the reward.)

Multiobjective modes (`AdvantageConfig.mode`):
- "sum_then_normalize": s = combine_objectives(R, w) (weighted sum, NaN-aware), then the
  estimator on s: advantages [N, 1] with weights [1.0].
- "normalize_then_sum" (GDPO-like): the estimator on each objective separately: advantages
  [N, K] (NaN where R is) with the weights w, combined in the loss.

DAPO dynamic sampling (`dynamic_sampling=True`): groups in which no advantage column has
variance carry no signal; their samples are dropped before the estimator runs (so they leave
batch statistics such as REINFORCE++'s whitening), get advantage 0 and are removed from the
returned sample mask; the kept fraction is reported.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cosmojax.registry import Registry
from cosmojax.rl.objectives import combine_objectives

MODES = ("sum_then_normalize", "normalize_then_sum")

# (rewards [N, C], present [N, C], group_ids [N], num_groups, config) -> (advantages, stats)
AdvantageFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
ADVANTAGE_ESTIMATORS = Registry[AdvantageFn]("advantage estimator")


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
  """Static configuration of the advantage computation (hashable).

  Attributes:
    estimator: a name in `ADVANTAGE_ESTIMATORS`.
    mode: "sum_then_normalize" or "normalize_then_sum" (see the module docstring).
    eps: added to standard deviations before dividing.
    ddof: delta degrees of freedom of standard deviations (1: unbiased, as torch.std).
    clip_filter_max_factor: the cap c of CPGD's clip-filter-like weight.
    dynamic_sampling: DAPO's filter of groups without reward variance (as a sample mask).
  """

  estimator: str = "grpo"
  mode: str = "sum_then_normalize"
  eps: float = 1e-6
  ddof: int = 1
  clip_filter_max_factor: float = 3.0
  dynamic_sampling: bool = False

  def __post_init__(self):
    ADVANTAGE_ESTIMATORS.get(self.estimator)  # KeyError naming the known choices.
    if self.mode not in MODES:
      raise ValueError(f"AdvantageConfig.mode {self.mode!r}; known: {MODES}.")
    if self.eps < 0 or self.ddof < 0 or self.clip_filter_max_factor <= 0:
      raise ValueError(
          f"AdvantageConfig: need eps >= 0, ddof >= 0, clip_filter_max_factor > 0; got "
          f"{self.eps}, {self.ddof}, {self.clip_filter_max_factor}."
      )


class AdvantageResult(NamedTuple):
  """What the learner feeds to the policy loss.

  Attributes:
    advantages: [N, K'] per sample and column (NaN where the objective does not apply), or
      [N, T, 1] from `reinforce_pp_token_advantages`.
    weights: [K'] the weights the loss combines the columns with.
    sample_mask: [N] bool: the incoming mask, minus samples without any objective, minus
      groups dropped by dynamic sampling. Multiply it into the loss mask.
    stats: scalars and per-objective [K] / per-column [K'] statistics.
  """

  advantages: jax.Array
  weights: jax.Array
  sample_mask: jax.Array
  stats: dict[str, jax.Array]


class GroupStats(NamedTuple):
  """Per-group statistics [G, C] and the same gathered per sample [N, C]."""

  count_gc: jax.Array
  has_variance_gc: jax.Array
  count_nc: jax.Array
  mean_nc: jax.Array
  std_nc: jax.Array
  has_variance_nc: jax.Array


def contiguous_group_ids(num_samples: int, group_size: int) -> jax.Array:
  """Group ids [N] for samples laid out as contiguous groups of `group_size`."""
  if group_size <= 0 or num_samples % group_size:
    raise ValueError(
        f"contiguous_group_ids: {num_samples} samples do not split into groups of {group_size}."
    )
  return jnp.arange(num_samples, dtype=jnp.int32) // group_size


def group_stats(
    values_nc: jax.Array, present_nc: jax.Array, group_ids_n: jax.Array, num_groups: int, ddof: int
) -> GroupStats:
  """Count, mean, std (ddof) and has-variance of each column within each group, NaN-aware."""
  present = present_nc.astype(bool)
  x = jnp.where(present, values_nc, 0.0)
  segment_sum = functools.partial(jax.ops.segment_sum, segment_ids=group_ids_n,
                                  num_segments=num_groups)
  count_gc = segment_sum(present.astype(jnp.float32))
  mean_gc = segment_sum(x) / jnp.maximum(count_gc, 1.0)
  dev = jnp.where(present, x - mean_gc[group_ids_n], 0.0)
  dof_gc = count_gc - ddof
  var_gc = jnp.where(dof_gc > 0, segment_sum(jnp.square(dev)) / jnp.maximum(dof_gc, 1.0), 0.0)
  max_gc = jax.ops.segment_max(jnp.where(present, x, -jnp.inf), group_ids_n, num_groups)
  min_gc = jax.ops.segment_min(jnp.where(present, x, jnp.inf), group_ids_n, num_groups)
  has_variance_gc = max_gc > min_gc
  return GroupStats(
      count_gc=count_gc,
      has_variance_gc=has_variance_gc,
      count_nc=count_gc[group_ids_n],
      mean_nc=mean_gc[group_ids_n],
      std_nc=jnp.sqrt(var_gc)[group_ids_n],
      has_variance_nc=has_variance_gc[group_ids_n],
  )


def _centered(rewards, present, group_ids, num_groups, config) -> tuple[jax.Array, GroupStats]:
  """r - mean_g, exactly 0 in groups without variance."""
  g = group_stats(rewards, present, group_ids, num_groups, config.ddof)
  return jnp.where(g.has_variance_nc, rewards - g.mean_nc, 0.0), g


def _safe_divide(x: jax.Array, denominator: jax.Array) -> jax.Array:
  """x / denominator, and 0 where the denominator is 0 (a std that underflowed with eps = 0)."""
  positive = denominator > 0
  return jnp.where(positive, x / jnp.where(positive, denominator, 1.0), 0.0)


def _batch_whiten(values_nc: jax.Array, present_nc: jax.Array, config) -> jax.Array:
  """(x - mean_B) / (std_B + eps) over the present entries of each column (0 if constant)."""
  ones = jnp.zeros(values_nc.shape[0], jnp.int32)
  g = group_stats(values_nc, present_nc, ones, 1, config.ddof)
  whitened = _safe_divide(values_nc - g.mean_nc, g.std_nc + config.eps)
  return jnp.where(g.has_variance_nc, whitened, 0.0)


@ADVANTAGE_ESTIMATORS.register("grpo", "cpgd_std")
def grpo_advantages(rewards_nc, present_nc, group_ids_n, num_groups, config):
  """GRPO / CPGD's STD weight: A = (r - mean_g) / (std_g + eps)."""
  centered, g = _centered(rewards_nc, present_nc, group_ids_n, num_groups, config)
  return _safe_divide(centered, g.std_nc + config.eps), {}


@ADVANTAGE_ESTIMATORS.register("dr_grpo", "cpgd_naive")
def dr_grpo_advantages(rewards_nc, present_nc, group_ids_n, num_groups, config):
  """Dr.GRPO / CPGD's naive weight: A = r - mean_g (no division by the std)."""
  centered, _ = _centered(rewards_nc, present_nc, group_ids_n, num_groups, config)
  return centered, {}


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo_advantages(rewards_nc, present_nc, group_ids_n, num_groups, config):
  """RLOO: A_i = r_i - 1/(n-1) sum_{j != i} r_j = n/(n-1) (r_i - mean_g); 0 when n = 1."""
  centered, g = _centered(rewards_nc, present_nc, group_ids_n, num_groups, config)
  return centered * g.count_nc / jnp.maximum(g.count_nc - 1.0, 1.0), {}


@ADVANTAGE_ESTIMATORS.register("cpgd_clip_filter_like")
def clip_filter_like_advantages(rewards_nc, present_nc, group_ids_n, num_groups, config):
  """CPGD's clip-filter-like weight: A = (r - mean_g) * min(B / B_var, c).

  B: groups where the objective is present; B_var: those with variance; factor 1 if B_var = 0.
  """
  centered, g = _centered(rewards_nc, present_nc, group_ids_n, num_groups, config)
  num_present = jnp.sum(g.count_gc > 0, axis=0).astype(jnp.float32)
  num_varied = jnp.sum(g.has_variance_gc, axis=0).astype(jnp.float32)
  factor_c = jnp.where(
      num_varied > 0,
      jnp.minimum(num_present / jnp.maximum(num_varied, 1.0), config.clip_filter_max_factor),
      1.0,
  )
  return centered * factor_c, {"clip_filter_factor": factor_c}


@ADVANTAGE_ESTIMATORS.register("reinforce_pp")
def reinforce_pp_advantages(rewards_nc, present_nc, group_ids_n, num_groups, config):
  """REINFORCE++ (outcome reward, no KL): A = (r - mean_B) / (std_B + eps) over the batch."""
  del group_ids_n, num_groups
  return _batch_whiten(rewards_nc, present_nc, config), {}


@ADVANTAGE_ESTIMATORS.register("reinforce_pp_baseline")
def reinforce_pp_baseline_advantages(rewards_nc, present_nc, group_ids_n, num_groups, config):
  """REINFORCE++-baseline: c = r - mean_g, A = (c - mean_B(c)) / (std_B(c) + eps)."""
  centered, _ = _centered(rewards_nc, present_nc, group_ids_n, num_groups, config)
  return _batch_whiten(centered, present_nc, config), {}


def _masked_moments(values_nc, present_nc):
  """Population mean and std of each column over its present entries."""
  present = present_nc.astype(bool)
  count = jnp.maximum(jnp.sum(present, axis=0), 1).astype(jnp.float32)
  mean = jnp.sum(jnp.where(present, values_nc, 0.0), axis=0) / count
  var = jnp.sum(jnp.where(present, jnp.square(values_nc - mean), 0.0), axis=0) / count
  return mean, jnp.sqrt(var)


def _fraction(flags, among):
  return jnp.sum(flags & among, axis=0) / jnp.maximum(jnp.sum(among, axis=0), 1)


def _check_rewards(rewards_nk, group_ids_n, weights_k, sample_mask_n, num_groups):
  if rewards_nk.ndim != 2:
    raise ValueError(f"rewards_nk must be [samples, objectives], got shape {rewards_nk.shape}.")
  n, k = rewards_nk.shape
  if group_ids_n.shape != (n,) or not jnp.issubdtype(group_ids_n.dtype, jnp.integer):
    raise ValueError(
        f"group_ids_n must be integer [samples] = ({n},), got {group_ids_n.dtype} "
        f"{group_ids_n.shape}."
    )
  if weights_k.shape != (k,):
    raise ValueError(f"weights_k has shape {weights_k.shape}; expected ({k},) objectives.")
  if sample_mask_n is not None and sample_mask_n.shape != (n,):
    raise ValueError(f"sample_mask_n has shape {sample_mask_n.shape}; expected ({n},).")
  if not isinstance(group_ids_n, jax.core.Tracer):
    ids = np.asarray(group_ids_n)
    if ids.size and (ids.min() < 0 or ids.max() >= num_groups):
      raise ValueError(
          f"group_ids_n must lie in [0, {num_groups}); got values in [{ids.min()}, {ids.max()}]."
      )
  if not isinstance(weights_k, jax.core.Tracer):
    w = np.asarray(weights_k)
    if (w < 0).any() or not w.sum() > 0:
      raise ValueError(f"weights_k must be nonnegative with a positive sum, got {w.tolist()}.")


def compute_advantages(
    rewards_nk: jax.Array,  # [samples, objectives], NaN where an objective does not apply
    group_ids_n: jax.Array,  # [samples] int in [0, num_groups)
    weights_k: jax.Array,  # [objectives], nonnegative
    config: AdvantageConfig = AdvantageConfig(),
    *,
    sample_mask_n: jax.Array | None = None,  # [samples] bool, False = padding
    num_groups: int | None = None,  # static bound on the group ids; default N
) -> AdvantageResult:
  """Advantages of a batch of vector rewards (equations in the module docstring).

  Validates shapes (and, outside jit, the group ids and weights), then runs the jitted
  computation. Masked-out samples count as missing for every objective.
  """
  num_groups = rewards_nk.shape[0] if num_groups is None else num_groups
  rewards_nk, group_ids_n, weights_k = map(jnp.asarray, (rewards_nk, group_ids_n, weights_k))
  _check_rewards(rewards_nk, group_ids_n, weights_k, sample_mask_n, num_groups)
  if sample_mask_n is None:
    sample_mask_n = jnp.ones(rewards_nk.shape[0], bool)
  return _compute_advantages(
      rewards_nk, group_ids_n, weights_k, jnp.asarray(sample_mask_n, bool), config, num_groups
  )


@functools.partial(jax.jit, static_argnames=("config", "num_groups"))
def _compute_advantages(rewards_nk, group_ids_n, weights_k, sample_mask_n, config, num_groups):
  rewards = rewards_nk.astype(jnp.float32)
  present_nk = ~jnp.isnan(rewards) & sample_mask_n[:, None]
  rewards = jnp.where(present_nk, rewards, jnp.nan)
  combined_n, has_objective_n = combine_objectives(rewards, weights_k)
  if config.mode == "sum_then_normalize":
    columns_nc, present_nc = combined_n[:, None], has_objective_n[:, None]
    out_weights = jnp.ones((1,), jnp.float32)
  else:
    columns_nc, present_nc = rewards, present_nk
    out_weights = weights_k.astype(jnp.float32)
  g = group_stats(columns_nc, present_nc, group_ids_n, num_groups, config.ddof)
  nonempty_gc = g.count_gc > 0
  informative_g = jnp.any(g.has_variance_gc, axis=-1)
  nonempty_g = jnp.any(nonempty_gc, axis=-1)
  keep_n = sample_mask_n & has_objective_n
  if config.dynamic_sampling:  # Dropped before estimating: they leave batch statistics too.
    keep_n = keep_n & informative_g[group_ids_n]
  used_nc = present_nc & keep_n[:, None]
  estimator = ADVANTAGE_ESTIMATORS.get(config.estimator)
  adv_nc, extra = estimator(
      jnp.where(used_nc, columns_nc, 0.0), used_nc, group_ids_n, num_groups, config
  )
  adv_nc = jnp.where(present_nc, jnp.where(used_nc, adv_nc, 0.0), jnp.nan)

  reward_mean, reward_std = _masked_moments(jnp.where(present_nk, rewards, 0.0), present_nk)
  adv_mean, adv_std = _masked_moments(jnp.where(used_nc, adv_nc, 0.0), used_nc)
  stats = {
      "reward_mean": reward_mean,
      "reward_std": reward_std,
      "reward_present_fraction": _fraction(present_nk, sample_mask_n[:, None]),
      "combined_reward_mean": _masked_moments(combined_n[:, None], has_objective_n[:, None])[0][0],
      "advantage_mean": adv_mean,
      "advantage_std": adv_std,
      "zero_variance_fraction": _fraction(~g.has_variance_gc, nonempty_gc),
      "zero_variance_group_fraction": _fraction(~informative_g, nonempty_g),
      "no_objective_fraction": _fraction(~has_objective_n, sample_mask_n),
      "kept_fraction": _fraction(keep_n, sample_mask_n),
      **extra,
  }
  return AdvantageResult(adv_nc, out_weights, keep_n, stats)


@functools.partial(jax.jit, static_argnames=("eps", "ddof"))
def reinforce_pp_token_advantages(
    rewards_nk: jax.Array,  # [samples, objectives], NaN = not applicable
    weights_k: jax.Array,  # [objectives]
    mask_bt: jax.Array,  # [samples, time] response tokens
    *,
    kl_bt: jax.Array | None = None,  # [samples, time] per-token KL(pi_old || pi_ref) estimate
    kl_coef: float | jax.Array = 0.0,
    sample_mask_n: jax.Array | None = None,  # [samples]
    eps: float = 1e-6,
    ddof: int = 1,
) -> AdvantageResult:
  """REINFORCE++ with the KL penalty in the token-level reward (gamma = 1).

    R_b = combine_objectives(R, w);  r_bt = -beta kl_bt, plus R_b at the last response token;
    G_bt = sum_{s >= t} m_bs r_bs = R_b - beta sum_{s >= t} m_bs kl_bs   (t a response token);
    A_bt = (G_bt - mean) / (std + eps) over every response token of the kept samples.

  Whitening over tokens weights samples by their length; with beta = 0, equal lengths and
  ddof = 0 it equals the "reinforce_pp" estimator. Returns advantages [N, T, 1] (0 off the
  mask, NaN for samples without objective) with weights [1.0].
  """
  if rewards_nk.ndim != 2 or mask_bt.shape[0] != rewards_nk.shape[0]:
    raise ValueError(
        f"rewards_nk {rewards_nk.shape} must be [samples, objectives] with the samples of "
        f"mask_bt {mask_bt.shape}."
    )
  if kl_bt is not None and kl_bt.shape != mask_bt.shape:
    raise ValueError(f"kl_bt has shape {kl_bt.shape}; expected {mask_bt.shape} like mask_bt.")
  keep_n = jnp.ones(rewards_nk.shape[0], bool) if sample_mask_n is None else sample_mask_n
  combined_n, has_objective_n = combine_objectives(rewards_nk, weights_k)
  keep_n = keep_n.astype(bool) & has_objective_n
  mask = mask_bt.astype(bool) & keep_n[:, None]
  returns_bt = jnp.broadcast_to(combined_n[:, None], mask.shape)
  if kl_bt is not None:
    kl = jnp.where(mask, kl_bt.astype(jnp.float32), 0.0)
    returns_bt = returns_bt - kl_coef * jnp.cumsum(kl[:, ::-1], axis=1)[:, ::-1]
  tokens = mask.reshape(-1, 1)
  whiten_config = AdvantageConfig(estimator="reinforce_pp", eps=eps, ddof=ddof)
  whitened = _batch_whiten(returns_bt.reshape(-1, 1), tokens, whiten_config).reshape(mask.shape)
  adv_bt = jnp.where(mask, whitened, 0.0)
  adv_bt = jnp.where(has_objective_n[:, None], adv_bt, jnp.nan)
  mean, std = _masked_moments(jnp.where(tokens, returns_bt.reshape(-1, 1), 0.0), tokens)
  stats = {
      "return_mean": mean[0],
      "return_std": std[0],
      "no_objective_fraction": jnp.mean(~has_objective_n),
  }
  return AdvantageResult(adv_bt[..., None], jnp.ones((1,), jnp.float32), keep_n, stats)


@functools.partial(jax.jit, static_argnames=("max_length", "cache_length"))
def overlong_penalty(lengths_n: jax.Array, max_length: int, cache_length: int) -> jax.Array:
  """DAPO's soft overlong punishment, a reward term per sample.

    R(L) = 0                                   if L <= L_max - L_cache
         = ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
         = -1                                  if L > L_max

  Add it to a reward column (DAPO adds it to the accuracy reward) or append it as its own
  objective. DAPO uses L_max = 20480, L_cache = 4096.
  """
  if not 0 < cache_length <= max_length:
    raise ValueError(
        f"overlong_penalty: need 0 < cache_length <= max_length, got {cache_length}, {max_length}."
    )
  length = lengths_n.astype(jnp.float32)
  soft_start = max_length - cache_length
  ramp = (soft_start - length) / cache_length
  return jnp.where(length <= soft_start, 0.0, jnp.where(length <= max_length, ramp, -1.0))
