"""Reward-model training: a pure jitted step and a small driver over preference data.

    model = RewardModel(from_pretrained(lm_dir), rngs=nnx.Rngs(0))
    model, history = train_reward_model(model, tokenizer, pairs, RMTrainConfig(steps=200))
    save_reward_model(model, out_dir); tokenizer.save_pretrained(out_dir)

The step is `(state, batch, rng) -> (state, metrics)`: the model's parameters are split into
the trained ones (`params`) and the rest (`rest`: parameters whose path names one of
`RMTrainConfig.frozen`, e.g. the unused LM head, and non-parameter state); the optimizer is
optax adamw after global-norm clipping. Losses (`cosmojax.rm.losses`):

- `PairwiseBatch`: Bradley-Terry on the pooled scores of the chosen and rejected sequences
  (one forward over both); metrics loss, accuracy (pairwise), margin, chosen, rejected.
- `PointwiseBatch`: binary cross-entropy on the pooled score of each sequence; a
  `ValueModel` is trained on every response token's value instead (each prefix predicts the
  sequence's label). Metrics loss, accuracy, reward.

Every step also reports `grad_norm` and `learning_rate`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import transformers
from flax import nnx
from jax.sharding import Mesh

from cosmojax.data.batching import BatchSpec
from cosmojax.models.heads import RewardModel, ValueModel
from cosmojax.parallel import axes
from cosmojax.parallel.sharding import Rules, shard_batch, shard_state
from cosmojax.rm import data as data_lib
from cosmojax.rm.losses import bradley_terry_loss, pointwise_loss

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class RMTrainConfig:
  """Reward-model training settings.

  Attributes:
    steps: optimizer steps.
    batch_size: pairs (pairwise) or responses (pointwise) per step.
    length_buckets: allowed token lengths of a batch; rows are cut on the left to the last.
    learning_rate: peak adamw learning rate.
    warmup_steps: linear warm-up from 0 to the peak, then constant.
    weight_decay: adamw decoupled weight decay.
    max_grad_norm: global gradient-norm clip.
    b1, b2: adam moments.
    frozen: parameters whose path contains one of these names are not trained (the LM head
      is unused by the score; the vision tower sees no images in text-only training).
    seed: shuffling seed of the driver.
  """

  steps: int = 200
  batch_size: int = 16
  length_buckets: tuple[int, ...] = (128, 256, 512, 1024)
  learning_rate: float = 1e-5
  warmup_steps: int = 0
  weight_decay: float = 0.0
  max_grad_norm: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  frozen: tuple[str, ...] = ("lm_head", "visual")
  seed: int = 0

  @property
  def spec(self) -> BatchSpec:
    return BatchSpec(self.batch_size, tuple(self.length_buckets))


@flax.struct.dataclass
class RMTrainState:
  """Training state, a pytree of arrays.

  Attributes:
    step: [] int32 optimizer steps taken.
    params: trained parameters (`nnx.State`).
    rest: frozen parameters and other model state (`nnx.State`).
    opt_state: the optax state of `params`.
  """

  step: jax.Array
  params: Any
  rest: Any
  opt_state: Any


def learning_rate_schedule(config: RMTrainConfig) -> optax.Schedule:
  """Linear warm-up to `learning_rate` over `warmup_steps`, then constant."""
  if config.warmup_steps <= 0:
    return optax.constant_schedule(config.learning_rate)
  return optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)


def make_optimizer(config: RMTrainConfig) -> optax.GradientTransformation:
  """Global-norm clipping, then adamw."""
  return optax.chain(
      optax.clip_by_global_norm(config.max_grad_norm),
      optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2,
                  weight_decay=config.weight_decay))


def trainable_filter(frozen: Sequence[str]) -> nnx.filterlib.Filter:
  """Parameters none of whose path entries is in `frozen`."""
  names = frozenset(frozen)
  return nnx.All(nnx.Param, lambda path, _: not any(str(p) in names for p in path))


def init_train_state(model: RewardModel, tx: optax.GradientTransformation,
                     frozen: Sequence[str] = RMTrainConfig.frozen, *, mesh: Mesh | None = None,
                     rules: Rules = axes.DEFAULT_RULES) -> tuple[nnx.GraphDef, RMTrainState]:
  """(graphdef, initial state) of `model`; parameters named in `frozen` are not trained.

  The state holds the model's own arrays (no copy), which the jitted step donates.

  With a `mesh`, the model state is placed by its logical axis names (`rules`) and the
  optimizer state is created under jit from it, so it follows the same sharding; the jitted
  step then keeps these shardings (batches go through `cosmojax.parallel.shard_batch`).
  """
  graphdef, params, rest = nnx.split(model, trainable_filter(frozen), ...)
  if not jax.tree.leaves(params):
    raise ValueError(f"frozen={tuple(frozen)} leaves no parameter to train")
  if mesh is not None:
    params, rest = shard_state(params, mesh, rules), shard_state(rest, mesh, rules)
  return graphdef, RMTrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                                opt_state=jax.jit(tx.init)(params))


def rm_loss(model: RewardModel, batch: data_lib.PairwiseBatch | data_lib.PointwiseBatch
            ) -> tuple[jax.Array, Metrics]:
  """The loss of a batch (module docstring)."""
  if isinstance(batch, data_lib.PairwiseBatch):
    ids = jnp.concatenate([batch.chosen_ids, batch.rejected_ids])
    mask = jnp.concatenate([batch.chosen_mask, batch.rejected_mask])
    r_chosen, r_rejected = jnp.split(model.score(ids, mask), 2)
    return bradley_terry_loss(r_chosen, r_rejected, batch.pair_mask, batch.margin)
  if isinstance(batch, data_lib.PointwiseBatch):
    if isinstance(model, ValueModel):
      values = model.token_scores(batch.input_ids, batch.attention_mask)
      labels = jnp.broadcast_to(batch.labels[:, None], values.shape)
      mask = (batch.response_mask > 0) & batch.example_mask[:, None]
      return pointwise_loss(values, labels, mask)
    return pointwise_loss(model.score(batch.input_ids, batch.attention_mask), batch.labels,
                          batch.example_mask)
  raise TypeError(f"unknown reward-model batch type {type(batch).__name__}")


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule | None = None
                    ) -> Callable[[RMTrainState, Any, jax.Array], tuple[RMTrainState, Metrics]]:
  """The jitted step `(state, batch, rng) -> (state, metrics)`; the old state is donated.

  `rng` is not consumed: the backbones are deterministic (no dropout); it keeps the
  framework's step signature. `schedule` (the optimizer's) is reported as `learning_rate`.
  """

  def step(state: RMTrainState, batch: Any, rng: jax.Array) -> tuple[RMTrainState, Metrics]:
    del rng

    def loss_fn(params):
      return rm_loss(nnx.merge(graphdef, params, state.rest), batch)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    if schedule is not None:
      metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    return RMTrainState(step=state.step + 1, params=params, rest=state.rest,
                        opt_state=opt_state), metrics

  return jax.jit(step, donate_argnums=0)


def _batches(data: Sequence[Any], encoder: data_lib.SequenceEncoder, spec: BatchSpec
             ) -> Callable[[np.ndarray], Any]:
  """Encodes `data` once; returns a function from row indices to a host batch."""
  if all(isinstance(d, data_lib.PreferencePair) for d in data):
    chosen = [ids for ids, _ in encoder.sequences([d.prompt for d in data],
                                                  [d.chosen for d in data])]
    rejected = [ids for ids, _ in encoder.sequences([d.prompt for d in data],
                                                    [d.rejected for d in data])]
    return lambda idx: data_lib.collate_pairs(
        [chosen[i] for i in idx], [rejected[i] for i in idx], [data[i].margin for i in idx],
        spec, encoder.pad_id)
  if all(isinstance(d, data_lib.LabeledResponse) for d in data):
    rows = encoder.sequences([d.prompt for d in data], [d.response for d in data])
    return lambda idx: data_lib.collate_pointwise(
        [rows[i] for i in idx], [data[i].label for i in idx], spec, encoder.pad_id)
  kinds = sorted({type(d).__name__ for d in data})
  raise TypeError(f"training data must be all PreferencePair or all LabeledResponse; got {kinds}")


def train_reward_model(model: RewardModel, tokenizer: transformers.PreTrainedTokenizerBase,
                       data: Sequence[data_lib.PreferencePair | data_lib.LabeledResponse],
                       config: RMTrainConfig = RMTrainConfig(), *, log_every: int = 0,
                       log_fn: Callable[[int, dict[str, float]], None] | None = None,
                       mesh: Mesh | None = None
                       ) -> tuple[RewardModel, list[dict[str, float]]]:
  """Trains `model` on preference pairs (Bradley-Terry) or labeled responses (BCE).

  Rows are formatted through the chat template (`cosmojax.rm.data`) and batched in
  `config.spec` shapes; each epoch visits the data in a fresh random order (the last batch of
  an epoch may be short: its padding rows are masked).

  Args:
    model: the reward (or value) model. Consumed: its arrays are donated to the first step
      (deleted afterwards); use the returned model.
    tokenizer: its tokenizer, with a chat template.
    data: all `PreferencePair` or all `LabeledResponse`.
    config: steps, batch shapes, optimizer.
    log_every: call `log_fn(step, metrics)` every this many steps (0: never).
    log_fn: receives host float metrics.
    mesh: shard the state by its logical axes and each batch over (data, fsdp)
      (`config.batch_size` must be a multiple of data * fsdp); None: the default device.

  Returns:
    (the trained model, per-step metrics as host floats with their `step`).
  """
  if not data:
    raise ValueError("no training data")
  encoder = data_lib.SequenceEncoder(tokenizer, config.spec.max_length)
  batch_of = _batches(data, encoder, config.spec)
  tx = make_optimizer(config)
  graphdef, state = init_train_state(model, tx, config.frozen, mesh=mesh)
  place = (lambda batch: batch) if mesh is None else (lambda batch: shard_batch(batch, mesh))
  train_step = make_train_step(graphdef, tx, learning_rate_schedule(config))
  rng = np.random.default_rng(config.seed)
  order = np.zeros(0, np.int64)
  key = jax.random.key(config.seed)
  history = []
  for step in range(config.steps):
    if order.size == 0:
      order = rng.permutation(len(data))
    idx, order = order[:config.batch_size], order[config.batch_size:]
    state, metrics = train_step(state, place(batch_of(idx)), jax.random.fold_in(key, step))
    history.append(metrics)
    if log_fn is not None and log_every and (step + 1) % log_every == 0:
      log_fn(step + 1, {k: float(v) for k, v in metrics.items()})
  history = [dict({k: float(v) for k, v in m.items()}, step=i + 1)
             for i, m in enumerate(jax.device_get(history))]
  return nnx.merge(graphdef, state.params, state.rest), history
