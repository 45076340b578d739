"""Runs an experiment: its stages in order, an evaluation after each, checkpoints, a report.

    evaluations = run(get_config())     # what `experiments/train.py` calls

Steps are counted globally across stages (stage i's steps follow stage i-1's), which is the
step of the metrics JSONL, TensorBoard and checkpoints. A checkpoint is saved every
`checkpoint.every` steps and after each stage's evaluation; on start, the newest checkpoint in
`workdir/checkpoints` resumes the run: the stage, its parameters and optimizer state, the data
iterator position, and the step. Randomness is a pure function of (seed, step), so a resumed
run reproduces an uninterrupted one step for step.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from cosmojax import optim
from cosmojax.checkpointing import Checkpointer, TrainingCheckpoint, abstract_target
from cosmojax.eval import MetricWriter, ProgressBar, comparison_table, write_report
from cosmojax.eval.runner import Evaluation, evaluate
from cosmojax.eval.suite_metrics import Metric, metrics_from_scalars, metrics_to_scalars
from cosmojax.experiment import components as comp
from cosmojax.experiment.spec import ExperimentSpec, StageSpec, experiment_spec
from cosmojax.rewards.recipes import REWARD_RECIPES, RecipeRewarder
from cosmojax.rl.trainer import RLTrainer
from cosmojax.sft import trainer as sft
from cosmojax.train_state import TrainState

_log = logging.getLogger(__name__)
_TAGS = ("description", "think", "answer")
_EVAL_STREAM = 2**31 - 1  # fold_in data of the evaluation key (training folds in steps)


def _recipe(stage: StageSpec) -> Mapping[str, Any]:
  recipe = dict(stage.recipe)
  if "objectives" in recipe:
    return recipe
  unknown = sorted(set(recipe) - {"name", "kwargs"})
  if unknown or "name" not in recipe:
    raise ValueError(f"config stages.{stage.name}.recipe: expected {{name, kwargs}} or a full "
                     f"recipe {{objectives, tasks, ...}}; got keys {sorted(recipe)}")
  return REWARD_RECIPES.get(recipe["name"])(**dict(recipe.get("kwargs") or {}))


def _host_scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
  return {k: np.asarray(v).tolist() for k, v in jax.device_get(dict(metrics)).items()}


class _Stopped(Exception):
  """Raised inside the step loop when `stop_after_step` is reached."""

  def __init__(self, step: int):
    super().__init__(step)
    self.step = step


class Run:
  """The state of one experiment run (see the module docstring)."""

  def __init__(self, spec: ExperimentSpec):
    self.spec = spec
    self.c = comp.build_components(spec)
    model = comp.init_model(self.c)
    self.graphdef, self.params = nnx.split(model)
    max_new = [s.sampling.get("max_new_tokens", 64) for s in spec.stages if s.kind == "rl"]
    self.engine = comp.make_engine(self.c, model, max_new + [spec.eval.max_new_tokens])
    self.key = jax.random.key(spec.seed)
    self.checkpointer = Checkpointer(os.path.join(spec.workdir, "checkpoints"),
                                     max_to_keep=spec.checkpoint_keep)
    self.offsets = np.concatenate([[0], np.cumsum([s.steps for s in spec.stages])]).tolist()
    self.evaluations: dict[str, dict[str, Metric]] = {}
    self.eval_batches = comp.evaluation_batches(self.c)

  # -- checkpoints ------------------------------------------------------------------------------
  def _save(self, step: int, stage_index: int, state: TrainState | None, data_state: Any,
            local_step: int, completed: bool) -> None:
    meta = {"local_step": local_step, "completed": completed,
            "updates": 0 if state is None else int(state.step),
            "evaluations": {s: metrics_to_scalars(m) for s, m in self.evaluations.items()}}
    self.checkpointer.save(TrainingCheckpoint(
        step=step, params=self.params if state is None else state.params,
        opt_state=None if state is None else state.opt_state,
        stage=self.spec.stages[min(stage_index, len(self.spec.stages) - 1)].name,
        stage_index=stage_index, data_state=data_state, rng=self.key, metadata=meta),
        force=True)

  def _restore(self) -> TrainingCheckpoint | None:
    """The newest checkpoint's parameters and metadata (the optimizer state is restored by
    `_resume_state`, once the stage's optimizer exists), or None for a fresh run."""
    if not self.spec.resume or self.checkpointer.latest_step() is None:
      return None
    latest = self.checkpointer.restore(params=abstract_target(self.params, self.c.mesh))
    self.params = latest.params
    self.evaluations = {s: metrics_from_scalars(m)
                        for s, m in latest.metadata["evaluations"].items()}
    _log.info("resuming from step %d (stage %s)", latest.step, latest.stage)
    return latest

  def _resume_state(self, latest: TrainingCheckpoint, state: TrainState) -> TrainState:
    """`state` with the checkpoint's optimizer state and update count. The restore target is
    the fresh state itself, so every array comes back with exactly the sharding a fresh run
    has: the resumed steps then run the same executable, bit for bit."""
    restored = self.checkpointer.restore(latest.step, params=abstract_target(state.params),
                                         opt_state=abstract_target(state.opt_state))
    step = jax.device_put(jnp.asarray(latest.metadata["updates"], jnp.int32),
                          state.step.sharding)
    return state.replace(params=restored.params, opt_state=restored.opt_state, step=step)

  def _fresh_state(self, i: int) -> TrainState:
    """The stage's train state, every leaf on the mesh: parameters and their moments as the
    parameters are sharded, scalars (step, Adam's count) replicated. Fresh and resumed runs
    thus hand the jitted steps identically placed arrays."""
    state = TrainState.create(nnx.merge(self.graphdef, self.params),
                              optim.make_optimizer(self.spec.stages[i].optimizer))
    replicated = NamedSharding(self.c.mesh, PartitionSpec())
    on_mesh = lambda x: (x if isinstance(getattr(x, "sharding", None), NamedSharding)
                         else jax.device_put(x, replicated))
    return jax.tree.map(on_mesh, state)

  # -- stages -----------------------------------------------------------------------------------
  def _reference(self, stage: StageSpec, state: TrainState, local_start: int
                 ) -> TrainState | None:
    """The reference policy of a stage whose loss has a KL term: the policy at the stage's
    start, saved once under workdir/reference/<stage> so that a resumed stage gets it back.
    It carries no optimizer state (nothing of it is ever donated)."""
    if stage.kind != "rl" or stage.learner.loss.kl_coef == 0.0:
      return None
    directory = os.path.join(self.spec.workdir, "reference", stage.name)
    if local_start == 0 and os.path.exists(directory):
      shutil.rmtree(directory)  # a fresh start of the stage: its start is the reference
    with Checkpointer(directory, max_to_keep=1, async_save=False) as references:
      if references.latest_step() is None:
        references.save(TrainingCheckpoint(step=0, params=state.params), force=True)
      params = references.restore(params=abstract_target(state.params)).params
    return state.replace(params=params, opt_state=None)

  def _trainer(self, stage: StageSpec, state: TrainState, reference: TrainState | None):
    """The stage's step function `(state, batch, meta, local, key) -> (state, metrics)`; the
    state keeps the shardings it has now (explicit output shardings)."""
    shardings = jax.tree.map(lambda x: x.sharding, state)
    if stage.kind == "sft":
      step_fn = sft.jit_train_step(shardings)

      def sft_step(state, batch, meta, local, key):
        del meta, local
        step_batch = sft.sft_step_batch(batch, self.c.model_config)
        step_batch = jax.device_put(step_batch, sft.batch_shardings(step_batch, self.c.mesh))
        return step_fn(state, step_batch, key, backend=stage.learner.logprob_backend)

      return sft_step, None
    sampling = comp.sampling_config(self.c, stage.sampling, f"stages.{stage.name}.sampling")
    trainer = RLTrainer(self.engine, RecipeRewarder(_recipe(stage)), self.c.tokenizer, sampling,
                        stage.learner, reference=reference, overlong=stage.overlong,
                        state_shardings=shardings)

    def rl_step(state, batch, meta, local, key):
      result = trainer.step(state, batch, meta, local, key)
      return result.state, result.metrics

    return rl_step, trainer

  def run_stage(self, i: int, state: TrainState, iterator, local_start: int,
                writer: MetricWriter, progress: ProgressBar, stop_after_step: int | None
                ) -> TrainState:
    stage = self.spec.stages[i]
    step_fn, trainer = self._trainer(stage, state, self._reference(stage, state, local_start))
    progress.set_stage(stage.name)
    for local in range(local_start, stage.steps):
      step = self.offsets[i] + local + 1
      batch, meta = next(iterator)
      state, metrics = step_fn(state, batch, meta, local, jax.random.fold_in(self.key, step))
      metrics = _host_scalars(metrics)
      skipped = metrics.get("skipped", metrics.get("learner/skipped", 0))
      if skipped:
        _log.warning("step %d (%s): non-finite loss or gradient, %d update(s) skipped",
                     step, stage.name, skipped)
      writer.write(step, metrics, stage=stage.name)
      progress.update(step, metrics)
      if step % self.spec.checkpoint_every == 0 and local + 1 < stage.steps:
        self._save(step, i, state, iterator.get_state(), local + 1, completed=False)
      if step == stop_after_step:
        raise _Stopped(step)
    if trainer is not None:
      trainer.rewarder.close()
    return state

  def evaluate(self, stage: StageSpec, params: Any) -> Evaluation:
    self.engine.update_params(params)
    sampling = comp.sampling_config(
        self.c, {"greedy": True, "max_new_tokens": self.spec.eval.max_new_tokens},
        "eval")
    return evaluate(self.engine, self.eval_batches(), self.c.tokenizer, sampling,
                    jax.random.fold_in(self.key, _EVAL_STREAM), tags=_TAGS)

  def __call__(self, stop_after_step: int | None = None) -> dict[str, dict[str, Metric]]:
    """Runs (or resumes) the stages; `stop_after_step` stops right after that global step, as
    a preemption would (the next call resumes from the last checkpoint)."""
    spec = self.spec
    latest = self._restore()
    first = 0 if latest is None else latest.stage_index
    writer = MetricWriter(spec.workdir, resume_step=None if latest is None else latest.step)
    progress = ProgressBar(self.offsets[-1], initial=0 if latest is None else latest.step)
    try:
      for i in range(first, len(spec.stages)):
        stage = spec.stages[i]
        state = self._fresh_state(i)
        iterator = iter(comp.stage_batches(self.c, stage, seed=spec.seed + i))
        local = 0
        if latest is not None and i == latest.stage_index and not latest.metadata["completed"]:
          state = self._resume_state(latest, state)
          iterator.set_state(latest.data_state)
          local = latest.metadata["local_step"]
        state = self.run_stage(i, state, iterator, local, writer, progress, stop_after_step)
        self.params = state.params
        end = self.offsets[i + 1]
        if stage.evaluate:
          evaluation = self.evaluate(stage, self.params)
          self.evaluations[stage.name] = evaluation.metrics
          writer.write(end, metrics_to_scalars(evaluation.metrics), stage=stage.name)
          print(f"\nEvaluation after {stage.name} (step {end}):\n"
                f"{comparison_table(self.evaluations)}\n", flush=True)
        self._save(end, i + 1, None, None, 0, completed=True)
    except _Stopped as stopped:
      _log.info("stopped after step %d as asked; rerun to resume", stopped.step)
      return self.evaluations
    finally:
      progress.close()
      writer.close()
      self.checkpointer.wait_until_finished()
    write_report(spec.workdir, evaluations=self.evaluations)
    return self.evaluations


def run(config: Any, *, stop_after_step: int | None = None) -> dict[str, dict[str, Metric]]:
  """Runs (or resumes) an experiment config (see configs/cosmo_tiny.py) and returns the
  evaluations; `stop_after_step` stops after that global step (see `Run.__call__`)."""
  return Run(experiment_spec(config))(stop_after_step)
