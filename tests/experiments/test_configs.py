"""The real-size configs: they validate, their stages and recipes are the published ones, their
data and verifier arguments are wired, and their `smoke` variants run end to end on CPU."""

from __future__ import annotations

import importlib
import math
import os

import pytest

from configs import common
from cosmojax import optim
from cosmojax.experiment import experiment_spec
from cosmojax.rewards import REWARD_RECIPES, VERIFIER_CACHE, build_recipe
from cosmojax.rl.learner import LearnerConfig
from tests.experiments import fixtures

FAKE = "model=/ckpt/qwen,data=/data/mix"
CONFIGS = {
    # name: (stage order, {stage: kind}, data files)
    "cosmo_r1_7b": (("sft", "rl_general", "rl_joint"),
                    ("sft", "general", "unsafe", "benign", "value", "eval")),
    "vtperception_r1_7b": (("sft", "rl"), ("sft", "vqa", "math", "eval")),
    "safework_r1_7b": (("cot_sft", "rl_multiobjective", "rl_efficiency"),
                       ("sft", "safety", "value", "knowledge", "eval")),
}


def _config(name: str, arg: str = FAKE):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def _rl_stages(spec):
  return [s for s in spec.stages if s.kind == "rl"]


# ------------------------------------------------------------------------------ parse_arg


def test_parse_arg_types_flags_and_errors():
  args = common.parse_arg("model=/a/b,steps=7,lr=0.5,smoke", model="", steps=1, lr=1.0,
                          smoke=False, verbose=True)
  assert (args.model, args.steps, args.lr, args.smoke, args.verbose) == ("/a/b", 7, 0.5, True,
                                                                         True)
  assert common.parse_arg("verbose=no", verbose=True).verbose is False
  assert common.parse_arg(None, steps=3).steps == 3
  with pytest.raises(ValueError, match=r"'stpes' is unknown; known: \['steps'\]"):
    common.parse_arg("stpes=2", steps=1)
  with pytest.raises(ValueError, match="steps='two': expected a int"):
    common.parse_arg("steps=two", steps=1)
  with pytest.raises(ValueError, match="'model' needs a value"):
    common.parse_arg("model", model="")
  with pytest.raises(ValueError, match="expected a boolean"):
    common.parse_arg("smoke=maybe", smoke=False)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_model_and_data_are_required(name):
  with pytest.raises(ValueError, match=rf"configs/{name}.py needs the argument\(s\) \['data'\]"):
    _config(name, "model=/ckpt/qwen")


# ------------------------------------------------------------------------ structure and data


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_validates_with_its_stages_and_files(name):
  order, files = CONFIGS[name]
  spec = experiment_spec(_config(name, FAKE + ",ext=parquet"))
  assert tuple(s.name for s in spec.stages) == order
  assert spec.stages[0].kind == "sft" and all(s.kind == "rl" for s in spec.stages[1:])
  assert spec.model.path == "/ckpt/qwen" and spec.tokenizer_path == "/ckpt/qwen"
  assert (spec.model.dtype, spec.model.param_dtype) == ("bfloat16", "float32")
  assert dict(spec.mesh) == {"data": 1, "fsdp": -1, "tensor": 1}
  assert spec.data.kind == "files"
  assert {n: s["path"] for n, s in spec.data.sources.items()} == {
      f: f"/data/mix/{f}.parquet" for f in files}
  assert [n for n, s in spec.data.sources.items() if s["split"] == "eval"] == ["eval"]
  for stage in spec.stages:
    optim.make_optimizer(stage.optimizer)  # the optimizer builds
    assert isinstance(stage.learner, LearnerConfig)
    # Every stage trains on its own files only, each of them a training file.
    assert set(stage.mixture) <= {n for n, s in spec.data.sources.items()
                                  if s["split"] == "train"}
  assert spec.stages[0].mixture == {"sft": 1.0}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("devices", [8, 32])  # an 8 x H100 node, a v5p-64 slice
def test_batches_split_over_the_data_parallel_devices(name, devices):
  """Every batch the runner shards (SFT batch, prompts, RL minibatch, eval) divides."""
  spec = experiment_spec(_config(name))
  assert spec.eval.batch_size % devices == 0
  for stage in spec.stages:
    if stage.kind == "sft":
      assert stage.batch_size % devices == 0
    else:
      minibatch = (stage.prompts_per_step * stage.sampling["group_size"]
                   // stage.learner.num_minibatches)
      assert stage.prompts_per_step % devices == 0 and minibatch % devices == 0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_rl_recipes_build_and_route_every_task_of_their_files(name):
  spec = experiment_spec(_config(name))
  for stage in _rl_stages(spec):
    recipe = build_recipe(stage.recipe)
    assert recipe.strict_tasks and not recipe.default_task
    tasks = {spec.data.sources[source]["task"] for source in stage.mixture}
    assert tasks <= set(recipe.task_weights), (stage.name, tasks)
    assert stage.learner.logprob_backend == "xla"  # Pallas cannot be partitioned (docstring)
    # The published KL to the initial policy: SafeWork's script 0.001 x k3, CoSMo and VTPerception
    # none. (The runner keeps a stage's initial policy as the reference when kl_coef != 0.)
    expected = (0.001, "k3") if name == "safework_r1_7b" else (0.0, "k3")
    assert (stage.learner.loss.kl_coef, stage.learner.loss.kl_estimator) == expected


# ------------------------------------------------------------------ the published settings


def test_cosmo_rl_is_cpgd_with_its_public_defaults_and_the_cosmo_reward():
  spec = experiment_spec(_config("cosmo_r1_7b"))
  registered = REWARD_RECIPES.get("cosmo_rl")(tags=("think", "answer"))
  for stage in _rl_stages(spec):
    loss = stage.learner.loss
    assert (loss.loss_type, loss.eps_low, loss.eps_high, loss.drift_coef) == ("cpgd", 0.2, 0.2,
                                                                                0.01)
    assert stage.sampling["group_size"] == 8 and stage.sampling["temperature"] == 1.0
    assert stage.optimizer.learning_rate == 1e-6
    assert sorted(stage.recipe["objectives"]) == sorted(registered["objectives"])
    assert stage.recipe["objectives"]["format"] == registered["objectives"]["format"]
  general, joint = _rl_stages(spec)
  assert general.mixture == {"general": 1.0} and general.jailbreak is None
  assert set(joint.mixture) == {"general", "unsafe", "benign", "value"}
  assert joint.jailbreak["safe_tasks"] == ("benign",)
  # Helpful and Visual-Focus are no goals for a harmful request.
  assert set(joint.recipe["tasks"]["unsafe"]) == {"format", "task_aware"}


def test_cosmo_rl_task_aware_takes_learned_verifiers_when_given():
  rule = experiment_spec(_config("cosmo_r1_7b")).stages[1].recipe
  assert set(rule["objectives"]["task_aware"]["kwargs"]) == {"routes"}  # rule-based defaults
  spec = experiment_spec(_config(
      "cosmo_r1_7b", FAKE + ",safety_rm=/rm/safety,knowledge_rm=/rm/knowledge,verifier=judge"))
  kwargs = spec.stages[2].recipe["objectives"]["task_aware"]["kwargs"]
  assert kwargs["safety"]["fn"] == kwargs["knowledge"]["fn"] == "learned_verifier"
  assert kwargs["safety"]["kwargs"]["path"] == "/rm/safety"
  assert kwargs["knowledge"]["kwargs"]["model"] == "judge"
  assert "value" not in kwargs  # not given: the rule-based Value verifier
  build_recipe(spec.stages[2].recipe)


def test_vtperception_rl_is_dapo_style_with_the_perception_first_schedule():
  spec = experiment_spec(_config("vtperception_r1_7b", FAKE + ",rl_steps=400"))
  (stage,) = _rl_stages(spec)
  loss, advantage = stage.learner.loss, stage.learner.advantage
  assert (loss.loss_type, loss.eps_low, loss.eps_high) == ("dapo", 0.2, 0.28)
  assert (loss.aggregation, loss.drift_coef, loss.kl_coef) == ("token-mean", 0.0, 0.0)
  assert advantage.dynamic_sampling and advantage.mode == "sum_then_normalize"
  recipe = build_recipe(stage.recipe)
  assert recipe.names == ("accuracy", "consistency", "format", "repetition", "textual_key",
                          "visual_key")
  assert set(recipe.task_weights) == {"vqa", "math"}
  # Linear decay 2.0 -> 0.5 over the stage's 400 steps: 1.25 half-way.
  from cosmojax.types import Example  # pylint: disable=g-import-not-at-top
  example = Example(id="x", task="vqa", messages=({"role": "user", "content": "q"},))
  k = recipe.names.index("visual_key")
  for step, want in ((0, 2.0), (200, 1.25), (400, 0.5), (800, 0.5)):
    assert math.isclose(recipe.weights([example], step)[0][0, k], want, rel_tol=1e-6)


def test_safework_weights_verifiers_equally_and_adds_efficiency_only_in_its_stage():
  spec = experiment_spec(_config("safework_r1_7b", FAKE + ",efficiency_weight=0.3"))
  multi, efficiency = _rl_stages(spec)
  assert build_recipe(multi.recipe).names == ("knowledge", "safety", "value")
  assert dict(multi.recipe["tasks"]) == {t: {t: 1.0} for t in ("safety", "value", "knowledge")}
  assert build_recipe(efficiency.recipe).names == ("efficiency", "knowledge", "safety", "value")
  assert dict(efficiency.recipe["tasks"]) == {
      t: {t: 1.0, "efficiency": 0.3} for t in ("safety", "value", "knowledge")}
  for stage in (multi, efficiency):
    loss = stage.learner.loss
    assert (loss.loss_type, loss.drift_coef, loss.aggregation) == ("cpgd", 0.0,
                                                                   "seq-mean-token-mean")
    assert stage.optimizer.learning_rate == 1e-6 and stage.optimizer.weight_decay == 0.01
  with pytest.raises(ValueError, match="efficiency_weight must be > 0"):
    _config("safework_r1_7b", FAKE + ",efficiency_weight=0")


def test_safework_learned_verifiers_replace_the_rule_based_ones():
  spec = experiment_spec(_config("safework_r1_7b",
                                 FAKE + ",safety_verifier=/v/safety,value_verifier=/v/value"))
  multi, efficiency = _rl_stages(spec)
  objectives = multi.recipe["objectives"]
  assert objectives["safety"]["kwargs"]["path"] == "/v/safety"
  assert objectives["value"]["kwargs"]["path"] == "/v/value"
  assert objectives["knowledge"]["fn"] == "routed"  # rule-based accuracy (no path given)
  routes = efficiency.recipe["objectives"]["efficiency"]["kwargs"]["correctness"]["kwargs"][
      "routes"]
  # Correctness of a learned verifier's score is a threshold on it.
  assert routes["safety"]["kwargs"]["threshold"] == 0.5
  assert routes["knowledge"] == objectives["knowledge"]


# ------------------------------------------------------------------------------ smoke runs


@pytest.mark.slow
def test_safework_smoke_runs_every_stage_with_a_learned_verifier(tmp_path):
  """The real-size config's `smoke` variant on a tiny checkpoint and tiny JSONL files: CoT-SFT,
  both RL stages (a learned Safety verifier, the efficiency term), evaluations, a report."""
  from cosmojax.experiment import run  # pylint: disable=g-import-not-at-top

  _, files = CONFIGS["safework_r1_7b"]
  ckpt = fixtures.tiny_checkpoint(str(tmp_path / "ckpt"))
  verifier = fixtures.tiny_reward_model_dir(str(tmp_path / "safety_rm"))
  data = fixtures.data_dir(str(tmp_path / "data"), files)
  workdir = str(tmp_path / "run")
  config = _config("safework_r1_7b", f"model={ckpt},data={data},workdir={workdir},"
                                     f"safety_verifier={verifier},smoke")
  loads = VERIFIER_CACHE.loads
  evaluations = run(config)
  assert VERIFIER_CACHE.loads == loads + 1  # the Safety verifier came from its directory
  assert sorted(evaluations) == ["cot_sft", "rl_efficiency", "rl_multiobjective"]
  records = fixtures.read_metrics(os.path.join(workdir, "smoke"))
  train = [r for r in records if not any(k.startswith("eval/") for k in r)]
  assert [(r["step"], r["stage"]) for r in train] == [
      (1, "cot_sft"), (2, "rl_multiobjective"), (3, "rl_efficiency")]
  sft, multi, efficiency = train
  assert math.isfinite(sft["loss"]) and sft["skipped"] == 0
  # The efficiency term only in its stage.
  assert "rewards/efficiency/mean" not in multi and "rewards/efficiency/mean" in efficiency
  for record in (multi, efficiency):
    assert 0.0 <= record["rewards/safety/mean"] <= 1.0
    assert record["learner/skipped"] == 0
  assert os.path.exists(os.path.join(workdir, "smoke", "report.md"))
