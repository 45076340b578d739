"""The JAX rollout engine: jitted prefill + KV-cache decode with G samples per prompt.

One `generate` call runs one jitted function over the split model state:

  image embeds = vision tower(pixel_values)         once per prompt batch, not per sample
  logits, cache = prefill(B prompts)                 one KV cache of T_p + T_n slots
  cache, logits = cache.repeat(G), logits.repeat(G)  rows b*G .. b*G+G-1 share prompt b
  lax.while_loop while t < max_new_tokens and some sample is live:
    token_t ~ filtered softmax(logits / temperature), key = fold_in(key, t)
    done |= token_t in eos_ids or the row's tail ends with a stop sequence
    logits, cache = decode_step(token_t, cache)

Static shapes come from buckets, so compilations are rare: the prompt length T_p is rounded
up to `prompt_buckets` (left padding) and the completion length to `completion_buckets`
(T_n >= max_new_tokens; max_new_tokens, temperature and top_p are traced values). The engine
counts compilations per entry point (`compilations`) and logs each new shape.

Rows of padding prompts (example_mask False) start done: they generate nothing (length 0)
and do not keep the loop running. The image placeholder id is never sampled (see
`JaxRolloutEngine`'s `suppressed_ids`). Sampling draws one uniform per row and step
(inverse CDF, `sampling.sample_tokens`).

Sharding: with a mesh, the prompt batch (and so the N = B * G samples, the cache and the
outputs) is split over the data-parallel axes (data, fsdp); parameters follow their logical
axis names (`cosmojax.parallel.state_shardings`); image patches are replicated.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, NamedTuple, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cosmojax import types
from cosmojax.models import VisionMeta, get_rope_index, num_image_tokens, vision_metadata
from cosmojax.parallel import axes, batch_spec, state_shardings
from cosmojax.rollout import sampling
from cosmojax.rollout.base import RolloutEngine, SamplingConfig
from cosmojax.rollout.scoring import completion_logprobs, per_sample_image_embeds

_log = logging.getLogger(__name__)

DEFAULT_COMPLETION_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@flax.struct.dataclass
class PreparedPrompts:
  """A prompt batch ready for the jitted generator (bucketed, positions and metadata made)."""

  input_ids: Any  # [B, T_p] int32, left-padded
  attention_mask: Any  # [B, T_p] int32
  position_ids: Any  # [3, B, T_p] int32
  example_mask: Any  # [B] bool
  task_ids: Any  # [B] int32
  pixel_values: Any  # [P, patch_dim] float32
  image_grid_thw: Any  # [I, 3] int32
  vision_meta: Any  # VisionMeta padded to P patches, or None when P == 0


class DecodeSpec(NamedTuple):
  """The static (compile-time) part of a generate call."""

  group_size: int
  num_new: int  # T_n, the completion bucket
  greedy: bool
  top_k: int
  use_top_p: bool
  eos_ids: tuple[int, ...]
  stop_sequences: tuple[tuple[int, ...], ...]
  pad_id: int
  suppressed_ids: tuple[int, ...]


class _Loop(NamedTuple):
  t: jax.Array  # [] next completion slot
  cache: Any
  tokens: jax.Array  # [N, T_n]
  logprobs: jax.Array  # [N, T_n]
  lengths: jax.Array  # [N]
  done: jax.Array  # [N] finished by EOS / stop sequence (or a padding prompt)
  tail: jax.Array  # [N, L] last generated tokens, for stop sequences


def _model_positions(model, position_ids):
  """[3, B, T] M-RoPE positions, or row 0 for a 1-D RoPE (text-only) model."""
  return position_ids if model.text.mrope_section is not None else position_ids[0]


def _encode(model, pixel_values, vision_meta):
  return None if vision_meta is None else model.encode_images(pixel_values,
                                                              vision_meta=vision_meta)


def _decode_loop(model, logits, cache, done, key, temperature, top_p, max_new_tokens,
                 spec: DecodeSpec) -> _Loop:
  """Samples up to max_new_tokens tokens per row from the prefilled cache and logits."""
  n = logits.shape[0]
  table = sampling.stop_table(spec.stop_sequences)
  eos = jnp.asarray(spec.eos_ids, jnp.int32)

  def sample_at(s: _Loop, logits_nv) -> _Loop:
    token, logp = sampling.sample_tokens(
        jax.random.fold_in(key, s.t), logits_nv, temperature, top_p, greedy=spec.greedy,
        top_k=spec.top_k, use_top_p=spec.use_top_p, suppressed_ids=spec.suppressed_ids)
    live = ~s.done
    token = jnp.where(live, token, spec.pad_id)
    stopped = jnp.isin(token, eos) if spec.eos_ids else jnp.zeros_like(live)
    tail = s.tail
    if table.size:
      tail = sampling.push_tail(tail, token)
      stopped = stopped | sampling.ends_with_stop(tail, table)
    return _Loop(t=s.t + 1, cache=s.cache, tokens=s.tokens.at[:, s.t].set(token),
                 logprobs=s.logprobs.at[:, s.t].set(jnp.where(live, logp, 0.0)),
                 lengths=s.lengths + live.astype(jnp.int32), done=s.done | (live & stopped),
                 tail=tail)

  def body(s: _Loop) -> _Loop:
    logits_nv, cache = model.decode_step(s.tokens[:, s.t - 1], s.cache)
    return sample_at(s._replace(cache=cache), logits_nv)

  def cond(s: _Loop) -> jax.Array:
    return (s.t < max_new_tokens) & ~jnp.all(s.done)

  first = sample_at(_Loop(
      t=jnp.zeros((), jnp.int32), cache=cache,
      tokens=jnp.full((n, spec.num_new), spec.pad_id, jnp.int32),
      logprobs=jnp.zeros((n, spec.num_new), jnp.float32), lengths=jnp.zeros((n,), jnp.int32),
      done=done, tail=sampling.empty_tail(n, table.shape[1])), logits)
  return jax.lax.while_loop(cond, body, first)


def generate_rollout(model, prompts: PreparedPrompts, key: jax.Array, temperature: jax.Array,
                     top_p: jax.Array, max_new_tokens: jax.Array, spec: DecodeSpec,
                     constrain=lambda x, batch_dim: x) -> types.Rollout:
  """The pure generator (run under jit by `JaxRolloutEngine`); see the module docstring.

  `constrain(x, batch_dim)` pins the sharding of per-sample arrays (identity without a mesh).
  """
  b, tp = prompts.input_ids.shape
  g, tn = spec.group_size, spec.num_new
  embeds = _encode(model, prompts.pixel_values, prompts.vision_meta)
  cache = model.init_cache(b, tp + tn)
  kwargs = {} if embeds is None else {"image_embeds": embeds}
  logits, cache = model.prefill(prompts.input_ids, cache, prompts.attention_mask,
                                _model_positions(model, prompts.position_ids), **kwargs)
  cache = jax.tree.map(lambda x: constrain(x, 0) if x.ndim else x, cache.repeat(g))
  logits = constrain(jnp.repeat(logits, g, axis=0), 0)
  sample_mask = jnp.repeat(prompts.example_mask.astype(bool), g)
  s = _decode_loop(model, logits, cache, ~sample_mask, key, temperature, top_p, max_new_tokens,
                   spec)

  rep = lambda x: jnp.repeat(x, g, axis=0)
  completion_mask = (jnp.arange(tn)[None] < s.lengths[:, None]).astype(jnp.int32)
  generated_positions = cache.next_position[:, None] + jnp.arange(tn, dtype=jnp.int32)
  positions = jnp.concatenate(
      [jnp.repeat(prompts.position_ids, g, axis=1),
       jnp.broadcast_to(generated_positions[None], (3, b * g, tn))], axis=2)
  n_idx = jnp.arange(b * g, dtype=jnp.int32)
  return types.Rollout(
      tokens=constrain(jnp.concatenate([rep(prompts.input_ids), s.tokens], axis=1), 0),
      attention_mask=constrain(jnp.concatenate(
          [rep(prompts.attention_mask).astype(jnp.int32), completion_mask], axis=1), 0),
      completion_mask=constrain(completion_mask, 0),
      logprobs=constrain(s.logprobs, 0),
      position_ids=constrain(positions.astype(jnp.int32), 1),
      prompt_index=constrain(n_idx // g, 0),
      sample_index=constrain(n_idx % g, 0),
      lengths=constrain(s.lengths, 0),
      truncated=constrain(~s.done & sample_mask, 0),
      task_ids=constrain(rep(prompts.task_ids).astype(jnp.int32), 0),
      sample_mask=constrain(sample_mask, 0),
      pixel_values=prompts.pixel_values,
      image_grid_thw=prompts.image_grid_thw,
      vision_meta=prompts.vision_meta,
      group_size=g,
  )


def score_rollout(model, rollout: types.Rollout, temperature: jax.Array,
                  suppressed_ids: tuple[int, ...] = ()) -> jax.Array:
  """log pi(completion tokens) by one full forward over prompt + completion.  # [N, T_n]

  The vision tower runs once over the prompt batch's patches; its output is expanded to the
  samples with `per_sample_image_embeds`. 0 where completion_mask is 0.
  """
  tp, g = rollout.prompt_length, rollout.group_size
  kwargs = {}
  embeds = _encode(model, rollout.pixel_values, rollout.vision_meta)
  if embeds is not None:
    kwargs["image_embeds"] = per_sample_image_embeds(
        embeds, rollout.tokens[::g, :tp], g, model.config.image_token_id)
  hidden = model.hidden_states(rollout.tokens, rollout.attention_mask,
                               position_ids=_model_positions(model, rollout.position_ids),
                               **kwargs)
  logp = completion_logprobs(hidden[:, tp - 1:-1], model.lm_head_matrix(),
                             rollout.tokens[:, tp:], temperature, suppressed_ids)
  return jnp.where(rollout.completion_mask > 0, logp, 0.0)


def _pad_only_meta(num_patches: int, merge_unit: int) -> VisionMeta:
  """Vision metadata of P patches that are all padding (a batch without images)."""
  return VisionMeta(patch_perm=np.arange(num_patches, dtype=np.int32),
                    rope_hw=np.zeros((num_patches, 2), np.int32),
                    window_segments=np.full(num_patches, -1, np.int32),
                    full_segments=np.full(num_patches, -1, np.int32),
                    merge_unperm=np.arange(num_patches // merge_unit, dtype=np.int32))


def _bucket(value: int, buckets: Sequence[int], what: str) -> int:
  for b in buckets:
    if b >= value:
      return b
  raise ValueError(f"{what} {value} exceeds the largest bucket {buckets[-1]} of {tuple(buckets)}")


def _signature(tree) -> tuple:
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves)


class JaxRolloutEngine(RolloutEngine):
  """`RolloutEngine` over a cosmojax `CausalLM` (Qwen2.5-VL or a text-only Qwen2).

  Args:
    model: the policy; it is split (`nnx.split`) and its state held by the engine.
    pad_id: token id written after a sample ends and used to left-pad prompts to a bucket.
    mesh: a (data, fsdp, tensor) mesh, or None for the default device.
    rules: logical axis rules placing the parameters on the mesh.
    prompt_buckets: prompt lengths T_p (ascending); a batch is left-padded to the smallest
      that holds it. None: the batch's own length (the Collator already buckets it).
    completion_buckets: completion lengths T_n (ascending); the smallest >= max_new_tokens.
    suppressed_ids: token ids never sampled (logits -inf in generation and in `logprobs`).
      None: the image placeholder id of a multimodal model (a full forward would give a
      sampled placeholder an image embedding), nothing for a text-only model. The policy is
      then the model's distribution renormalised over the other tokens; a learner that
      computes log-probs itself should mask the same ids (the difference is
      log(1 - p(suppressed)), negligible for a trained model).
  """

  def __init__(self, model: nnx.Module, *, pad_id: int, mesh: Mesh | None = None,
               rules=axes.DEFAULT_RULES, prompt_buckets: Sequence[int] | None = None,
               completion_buckets: Sequence[int] = DEFAULT_COMPLETION_BUCKETS,
               suppressed_ids: Sequence[int] | None = None):
    for name, buckets in (("prompt_buckets", prompt_buckets),
                          ("completion_buckets", completion_buckets)):
      if buckets is not None and (not buckets or list(buckets) != sorted(set(buckets))
                                  or buckets[0] < 1):
        raise ValueError(f"JaxRolloutEngine.{name} must be ascending, distinct, >= 1: {buckets}")
    self.graphdef, state = nnx.split(model)
    self.model_config = model.config
    self.is_multimodal = hasattr(model, "encode_images")
    self.pad_id = int(pad_id)
    if suppressed_ids is None:
      suppressed_ids = (model.config.image_token_id,) if self.is_multimodal else ()
    self.suppressed_ids = tuple(int(i) for i in suppressed_ids)
    self.mesh = mesh
    self.rules = rules
    self.prompt_buckets = None if prompt_buckets is None else tuple(prompt_buckets)
    self.completion_buckets = tuple(completion_buckets)
    self.compilations: collections.Counter[str] = collections.Counter()
    self._seen: set[tuple] = set()
    self._state_signature: tuple = ()
    self.state: Any = None
    self.update_params(state)
    self._generate = jax.jit(self._generate_impl, static_argnames="spec")
    self._score = jax.jit(self._score_impl)

  # -- RolloutEngine --------------------------------------------------------------------------
  def generate(self, batch: types.PromptBatch, key: jax.Array,
               config: SamplingConfig) -> types.Rollout:
    prompts = self._place(self.prepare_prompts(batch))
    spec = DecodeSpec(
        group_size=config.group_size,
        num_new=_bucket(config.max_new_tokens, self.completion_buckets, "max_new_tokens"),
        greedy=config.greedy, top_k=0 if config.greedy else config.top_k,
        use_top_p=not config.greedy and config.top_p < 1.0, eos_ids=config.eos_ids,
        stop_sequences=config.stop_sequences, pad_id=self.pad_id,
        suppressed_ids=self.suppressed_ids)
    self._count("generate", prompts, spec)
    return self._generate(self.state, prompts, key, np.float32(config.temperature),
                          np.float32(config.top_p), np.int32(config.max_new_tokens), spec=spec)

  def logprobs(self, rollout: types.Rollout, temperature: float = 1.0) -> jax.Array:
    self._count("logprobs", rollout)
    return self._score(self.state, rollout, np.float32(temperature))

  def update_params(self, state: Any) -> None:
    if self.state is not None and (jax.tree.structure(state) != jax.tree.structure(self.state)):
      raise ValueError("update_params: the new state's structure differs from the model's "
                       "(give the nnx.State of the same model, e.g. nnx.split(model)[1]).")
    if self.mesh is not None:
      state = jax.device_put(state, state_shardings(state, self.mesh, self.rules))
    self.state = state
    self._state_signature = _signature(state)

  # -- compilation count ----------------------------------------------------------------------
  @property
  def num_compilations(self) -> int:
    """Compilations so far over all entry points (one per new static shape / spec)."""
    return sum(self.compilations.values())

  def _count(self, name: str, args: Any, spec: DecodeSpec | None = None) -> None:
    key = (name, self._state_signature, _signature(args), spec)
    if key in self._seen:
      return
    self._seen.add(key)
    self.compilations[name] += 1
    _log.info("rollout: compiling %s (#%d) for input shapes %s%s", name,
              self.compilations[name], [shape for shape, _ in key[2][1]],
              "" if spec is None else f", {spec}")

  # -- jitted bodies --------------------------------------------------------------------------
  def _constrain(self, x: jax.Array, batch_dim: int) -> jax.Array:
    if self.mesh is None:
      return x
    sharding = NamedSharding(self.mesh, batch_spec(x.ndim, batch_dim))
    return jax.lax.with_sharding_constraint(x, sharding)

  def _generate_impl(self, state, prompts, key, temperature, top_p, max_new_tokens, *, spec):
    model = nnx.merge(self.graphdef, state)
    return generate_rollout(model, prompts, key, temperature, top_p, max_new_tokens, spec,
                            self._constrain)

  def _score_impl(self, state, rollout, temperature):
    return score_rollout(nnx.merge(self.graphdef, state), rollout, temperature,
                         self.suppressed_ids)

  # -- host-side preparation ------------------------------------------------------------------
  def prepare_prompts(self, batch: types.PromptBatch) -> PreparedPrompts:
    """Host NumPy: checks, bucket padding, M-RoPE positions, vision metadata."""
    ids = np.asarray(batch.input_ids).astype(np.int32)
    mask = np.asarray(batch.attention_mask).astype(np.int32)
    if ids.ndim != 2 or mask.shape != ids.shape:
      raise ValueError(f"PromptBatch.input_ids {ids.shape} and attention_mask {mask.shape} "
                       "must both be [batch, time].")
    bad = np.nonzero(np.any(np.diff(mask, axis=1) < 0, axis=1))[0]
    if bad.size:
      raise ValueError(f"PromptBatch.attention_mask row {int(bad[0])} is not left-padded "
                       "(a 1 before a 0); rollout prompts must end at the last column.")
    pixels, grid, valid = self._images(batch, ids)
    positions = self._positions(batch, ids, mask, valid)
    if self.prompt_buckets is not None:
      pad = _bucket(ids.shape[1], self.prompt_buckets, "prompt length") - ids.shape[1]
      ids = np.pad(ids, ((0, 0), (pad, 0)), constant_values=self.pad_id)
      mask = np.pad(mask, ((0, 0), (pad, 0)))
      positions = np.pad(positions, ((0, 0), (0, 0), (pad, 0)))
    meta = None
    if pixels.shape[0]:
      vision = self.model_config.vision
      meta = (vision_metadata(valid, vision, pad_to=pixels.shape[0]) if len(valid)
              else _pad_only_meta(pixels.shape[0], vision.merge_unit))
    example_mask = (np.ones(ids.shape[0], bool) if batch.example_mask is None
                    else np.asarray(batch.example_mask).astype(bool))
    task_ids = (np.zeros(ids.shape[0], np.int32) if batch.task_ids is None
                else np.asarray(batch.task_ids).astype(np.int32))
    return PreparedPrompts(input_ids=ids, attention_mask=mask, position_ids=positions,
                           example_mask=example_mask, task_ids=task_ids, pixel_values=pixels,
                           image_grid_thw=grid, vision_meta=meta)

  def _images(self, batch, ids):
    pixels = (np.zeros((0, 0), np.float32) if batch.pixel_values is None
              else np.asarray(batch.pixel_values, np.float32))
    grid = (np.zeros((0, 3), np.int32) if batch.image_grid_thw is None
            else np.asarray(batch.image_grid_thw).astype(np.int32).reshape(-1, 3))
    valid = grid[grid[:, 0] > 0]
    if not self.is_multimodal:
      if len(valid) or pixels.shape[0]:
        raise ValueError("PromptBatch has image patches but the model is text-only.")
      return pixels, grid, valid
    want = num_image_tokens(valid, self.model_config.vision) if len(valid) else 0
    have = int(np.sum(ids == self.model_config.image_token_id))
    if want != have:
      raise ValueError(f"PromptBatch.image_grid_thw gives {want} image tokens but input_ids "
                       f"hold {have} (id {self.model_config.image_token_id}).")
    return pixels, grid, valid

  def _positions(self, batch, ids, mask, valid) -> np.ndarray:
    if batch.position_ids is not None:
      positions = np.asarray(batch.position_ids).astype(np.int32)
      if positions.shape != (3, *ids.shape):
        raise ValueError(f"PromptBatch.position_ids has shape {positions.shape}; expected "
                         f"[3, batch, time] = {(3, *ids.shape)}.")
      return positions
    if len(valid):
      return get_rope_index(ids, valid, mask, self.model_config)[0].astype(np.int32)
    text = np.where(mask > 0, np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return np.broadcast_to(text[None], (3, *ids.shape)).copy()

  def _place(self, prompts: PreparedPrompts) -> PreparedPrompts:
    if self.mesh is None:
      return jax.device_put(prompts)
    dp = self.mesh.shape[axes.DATA] * self.mesh.shape[axes.FSDP]
    b = prompts.input_ids.shape[0]
    if b % dp:
      raise ValueError(f"prompt batch of {b} rows is not a multiple of the data-parallel size "
                       f"{dp} (data x fsdp) of the mesh.")
    rows = lambda nd, dim=0: NamedSharding(self.mesh, batch_spec(nd, dim))
    replicated = NamedSharding(self.mesh, PartitionSpec())
    shardings = PreparedPrompts(
        input_ids=rows(2), attention_mask=rows(2), position_ids=rows(3, 1),
        example_mask=rows(1), task_ids=rows(1), pixel_values=replicated,
        image_grid_thw=replicated,
        vision_meta=jax.tree.map(lambda _: replicated, prompts.vision_meta))
    return jax.device_put(prompts, shardings)
