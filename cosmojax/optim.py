"""Optimizers from a config, and the guard that skips non-finite updates.

    tx = make_optimizer({"learning_rate": 1e-6, "schedule": "cosine", "warmup_steps": 10,
                         "total_steps": 500, "weight_decay": 0.01, "max_grad_norm": 1.0})
    opt_state = tx.init(params)
    # inside the jitted train step:
    params, opt_state, metrics = apply_gradients(tx, params, opt_state, grads, loss)

The optimizer is `clip_by_global_norm(max_grad_norm)` then AdamW with a learning-rate schedule
(`LR_SCHEDULES`: linear warmup from 0 to the peak over `warmup_steps`, then constant, cosine
or linear decay to `final_lr_ratio * peak` at `total_steps`) and decoupled weight decay on a
mask: only parameters with two or more dimensions whose path names no `no_decay` pattern are
decayed, so norm scales and biases never are. `frozen` patterns leave the parameters whose
path matches one untouched (no update, no weight decay, no Adam moments, and no share of the
clipped gradient norm), e.g. `frozen=("^visual/",)` trains the language model alone.

Non-finite steps. `skip_nonfinite_update` keeps the old (params, opt_state) when the loss or
the global gradient norm is not finite, and reports `skipped`; `apply_gradients` wires it
after `tx.update`. We do not use `optax.apply_if_finite` because (1) it only looks at the
gradients, not at the loss; (2) it wraps the optimizer state in its own state, so the reported
flag sits deep inside `opt_state` and checkpoints change structure when the guard is toggled;
(3) after `max_consecutive_errors` bad steps it applies the non-finite update anyway, while we
never want NaN in the parameters. With the select, a skipped step leaves the optimizer state
bit-for-bit unchanged, so its step counter (Adam's bias correction and the schedule position)
does not advance. The trainer's own loop step (data position, checkpoint step) is its choice:
the batch was consumed, so it normally advances and counts the skipped steps from `skipped`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from cosmojax.registry import Registry

LR_SCHEDULES = Registry[Callable[["OptimizerConfig"], optax.Schedule]]("learning-rate schedule")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW with warmup, a decay schedule, global-norm clipping and masked weight decay.

  Attributes:
    learning_rate: the peak learning rate (after warmup).
    schedule: a name in `LR_SCHEDULES`: "constant", "cosine" or "linear".
    warmup_steps: linear warmup from 0 to `learning_rate` over this many optimizer steps.
    total_steps: warmup + decay steps; the decaying schedules reach their end value here.
    final_lr_ratio: the end learning rate of a decaying schedule, as a fraction of the peak.
    b1, b2, eps: Adam's moment decay rates and denominator epsilon.
    weight_decay: decoupled weight decay (AdamW), scaled by the learning rate.
    max_grad_norm: clip gradients to this global norm; None disables clipping.
    no_decay: regular expressions; a parameter whose path (lower-cased keys, e.g.
      "layers/0/input_layernorm/scale") matches one is not decayed.
    frozen: regular expressions, matched the same way; a parameter that matches one is not
      trained at all (e.g. "^visual/" freezes a vision-language model's vision tower).
  """

  learning_rate: float = 1e-6
  schedule: str = "constant"
  warmup_steps: int = 0
  total_steps: int = 0
  final_lr_ratio: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  max_grad_norm: float | None = 1.0
  no_decay: tuple[str, ...] = ("bias", "norm")
  frozen: tuple[str, ...] = ()

  def __post_init__(self):
    if self.schedule not in LR_SCHEDULES:
      LR_SCHEDULES.get(self.schedule)  # raises the KeyError listing the known schedules
    if self.learning_rate < 0 or self.warmup_steps < 0 or self.weight_decay < 0:
      raise ValueError(f"optimizer: learning_rate, warmup_steps and weight_decay must be >= 0; "
                       f"got {self.learning_rate}, {self.warmup_steps}, {self.weight_decay}")
    if self.max_grad_norm is not None and self.max_grad_norm <= 0:
      raise ValueError(f"optimizer: max_grad_norm must be positive or None; got "
                       f"{self.max_grad_norm}")
    if self.schedule != "constant" and self.total_steps <= self.warmup_steps:
      raise ValueError(f"optimizer: schedule {self.schedule!r} needs total_steps > warmup_steps;"
                       f" got total_steps={self.total_steps}, warmup_steps={self.warmup_steps}")

  @classmethod
  def from_mapping(cls, config: Mapping[str, Any]) -> OptimizerConfig:
    """From a dict or `ml_collections.ConfigDict`; unknown keys are an error naming them."""
    config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(config) - set(fields))
    if unknown:
      raise ValueError(f"optimizer config: unknown keys {unknown}; known: {fields}")
    for key in ("no_decay", "frozen"):
      if key in config:
        if isinstance(config[key], str):
          raise ValueError(f"optimizer config: {key} is a string ({config[key]!r}); give a "
                           f"tuple of regular expressions, e.g. ({config[key]!r},)")
        config[key] = tuple(config[key])
    return cls(**config)


def _warmup(config: OptimizerConfig, after: optax.Schedule) -> optax.Schedule:
  if config.warmup_steps == 0:
    return after
  warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  return optax.join_schedules([warmup, after], [config.warmup_steps])


@LR_SCHEDULES.register("constant")
def constant_schedule(config: OptimizerConfig) -> optax.Schedule:
  """lr(t) = peak * t / W for t < W, then peak."""
  return _warmup(config, optax.constant_schedule(config.learning_rate))


@LR_SCHEDULES.register("cosine")
def cosine_schedule(config: OptimizerConfig) -> optax.Schedule:
  """Warmup, then lr(t) = end + (peak - end) * (1 + cos(pi * (t - W) / (T - W))) / 2,
  end = final_lr_ratio * peak, held at end after T = total_steps."""
  return optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps, config.total_steps,
      end_value=config.learning_rate * config.final_lr_ratio)


@LR_SCHEDULES.register("linear")
def linear_schedule(config: OptimizerConfig) -> optax.Schedule:
  """Warmup, then linear from peak at W to final_lr_ratio * peak at T, held after."""
  decay = optax.linear_schedule(config.learning_rate,
                                config.learning_rate * config.final_lr_ratio,
                                config.total_steps - config.warmup_steps)
  return _warmup(config, decay)


def learning_rate_schedule(config: OptimizerConfig | Mapping[str, Any]) -> optax.Schedule:
  """The schedule of a config: optimizer step -> learning rate."""
  config = _as_config(config)
  return LR_SCHEDULES.get(config.schedule)(config)


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def param_path(path: tuple[Any, ...]) -> str:
  """'layers/0/mlp/kernel' for a pytree key path (the `.value` of nnx Variables dropped)."""
  names = [_key_name(k) for k in path]
  if names and names[-1] == "value":
    names = names[:-1]
  return "/".join(names).lower()


def decay_mask(params: Any, no_decay: tuple[str, ...] = OptimizerConfig.no_decay) -> Any:
  """A tree of bools like `params`: True where weight decay applies (see the module docs)."""
  patterns = [re.compile(p) for p in no_decay]

  def decayed(path, x):
    name = param_path(path)
    return jnp.ndim(x) >= 2 and not any(p.search(name) for p in patterns)

  return jax.tree_util.tree_map_with_path(decayed, params)


def frozen_mask(params: Any, frozen: tuple[str, ...]) -> Any:
  """A tree of bools like `params`: True where a `frozen` pattern matches the path.

  Raises:
    ValueError: a pattern matches no parameter (most likely a misspelt path).
  """
  patterns = [re.compile(p) for p in frozen]
  names = [param_path(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  unmatched = [p.pattern for p in patterns if not any(p.search(n) for n in names)]
  if unmatched:
    raise ValueError(f"optimizer: frozen patterns {unmatched} match no parameter; paths look "
                     f"like {names[:3]}")
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(p.search(param_path(path)) for p in patterns), params)


def _as_config(config: OptimizerConfig | Mapping[str, Any]) -> OptimizerConfig:
  return config if isinstance(config, OptimizerConfig) else OptimizerConfig.from_mapping(config)


def make_optimizer(config: OptimizerConfig | Mapping[str, Any]) -> optax.GradientTransformation:
  """The optimizer of a config (see `OptimizerConfig`)."""
  config = _as_config(config)
  adamw = optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2,
                      eps=config.eps, weight_decay=config.weight_decay,
                      mask=lambda params: decay_mask(params, config.no_decay))
  tx = adamw
  if config.max_grad_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)
  if not config.frozen:
    return tx

  def labels(params):
    return jax.tree.map(lambda f: "frozen" if f else "trained",
                        frozen_mask(params, config.frozen))

  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


def skip_nonfinite_update(new_params: Any, new_opt_state: Any, old_params: Any,
                          old_opt_state: Any, loss: jax.Array, grads: Any
                          ) -> tuple[Any, Any, dict[str, jax.Array]]:
  """Keeps the old state when the step is not finite (jit-friendly, no host sync).

      finite = isfinite(loss) and isfinite(||grads||_2)   (global norm over all leaves)
      (params, opt_state) = new if finite else old

  Args:
    new_params, new_opt_state: the state after the update.
    old_params, old_opt_state: the state before it (same tree structures).
    loss: the scalar loss of the step.
    grads: the gradients of the step (before clipping).

  Returns:
    (params, opt_state, metrics) with metrics {"skipped": bool [], "grad_norm": float32 []}.
  """
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  select = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  params = select(new_params, old_params)
  opt_state = select(new_opt_state, old_opt_state)
  return params, opt_state, {"skipped": jnp.logical_not(finite), "grad_norm": grad_norm}


def apply_gradients(tx: optax.GradientTransformation, params: Any, opt_state: Any, grads: Any,
                    loss: jax.Array) -> tuple[Any, Any, dict[str, jax.Array]]:
  """One optimizer step guarded by `skip_nonfinite_update`: (params, opt_state, metrics)."""
  updates, new_opt_state = tx.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  return skip_nonfinite_update(new_params, new_opt_state, params, opt_state, loss, grads)
