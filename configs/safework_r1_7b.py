r"""SafeWork-R1 (SafeLadder) on Qwen2.5-VL-7B-Instruct: CoT-SFT, multi-objective RL with
Safety / Value / Knowledge verifiers, then the efficiency stage.

    python experiments/train.py \
        --config=configs/safework_r1_7b.py:model=/ckpt/Qwen2.5-VL-7B-Instruct,data=/data/sw
    # with learned verifiers (reward models; verifier=judge for generative judges)
    V=safety_verifier=/ckpt/safety_orm,value_verifier=/ckpt/value_orm
    V=$V,knowledge_verifier=/ckpt/knowledge_orm
    python experiments/train.py \
        --config=configs/safework_r1_7b.py:model=/ckpt/Qwen2.5-VL-7B-Instruct,data=/data/sw,$V

Arguments (`key=value`, comma-separated): model (local Hugging Face directory, also the
tokenizer), data (directory of the files below), ext (jsonl | parquet), workdir,
safety_verifier / value_verifier / knowledge_verifier (learned verifier directories,
`cosmojax.rewards.verifier_spec`; empty: the rule-based safety, value and accuracy
verifiers), verifier (reward_model | judge), efficiency_weight (of the efficiency stage, > 0),
sft_steps, rl_steps, efficiency_steps, smoke (every size shrunk to a few CPU steps with a tiny
checkpoint; the tests).

Data files in `data` (records as `cosmojax.data.read_jsonl` documents them; SFT targets are
`<think>…</think><answer>…</answer>` chains of thought):
    sft        CoT-SFT conversations (task "sft")
    safety     requests with a safety label: unsafe ones to refuse, safe ones to answer
               (task "safety")
    value      value-alignment prompts with a `preferred` answer (task "value")
    knowledge  questions with ground truths (task "knowledge")
    eval       held-out prompts (split "eval"; each record names its task)

From SafeWork-R1's public M3-RL script (LightRFT `examples/safework_t1_runnable`): each task
scored by its verifier with weight 1.0, 8 samples per prompt, 128 prompts per rollout,
learning rate 1e-6 with 3% warmup, weight decay 0.01, CPGD's clipped policy-gradient loss
without the drift term, 0.001 x k3 KL to the stage's initial policy (the runner keeps it as
the reference), seq-mean-token-mean aggregation, group-normalized advantages.

What the runner does not do yet (not faked here):
  - the public script's 8192-token generations: 4096 here, and even these batch sizes do
    not fit yet (memory note in configs/common.py); no gradient accumulation.
  - the Pallas log-prob kernels under XLA partitioning (the XLA path is used; see
    configs/cosmo_r1_7b.py).
"""

from __future__ import annotations

import ml_collections

from configs import common
from cosmojax.rewards import REWARD_RECIPES, verifier_spec

TAGS = ("think", "answer")
VERIFIER_TASKS = ("safety", "value", "knowledge")  # each task is scored by its verifier
_FILES = {  # name: (task of records without one, split)
    "sft": ("sft", "train"), "safety": ("safety", "train"), "value": ("value", "train"),
    "knowledge": ("knowledge", "train"), "eval": ("knowledge", "eval"),
}


def _learned(args: ml_collections.ConfigDict, **options) -> dict[str, dict]:
  paths = {"safety": args.safety_verifier, "value": args.value_verifier,
           "knowledge": args.knowledge_verifier}
  return {kind: verifier_spec(kind, path, model=args.verifier, **options)
          for kind, path in paths.items() if path}


def recipe(args: ml_collections.ConfigDict, efficiency_weight: float) -> dict:
  """SafeWork-R1's reward (`REWARD_RECIPES["safework_r1"]`) for the data files' tasks: the
  task's verifier with weight 1.0, plus the efficiency term when `efficiency_weight` > 0."""
  r = REWARD_RECIPES.get("safework_r1")(tags=TAGS, efficiency_weight=efficiency_weight)
  r["objectives"].update(_learned(args))
  r["tasks"] = {task: {task: 1.0} for task in VERIFIER_TASKS}
  if efficiency_weight > 0:
    # Brevity only counts for a correct answer; with learned verifiers, "correct" is a score
    # of at least 0.5 (a reward model's sigmoid, a judge's P(yes)).
    routes = {t: r["objectives"][t] for t in VERIFIER_TASKS}
    routes.update(_learned(args, threshold=0.5))
    r["objectives"]["efficiency"]["kwargs"]["correctness"] = {
        "fn": "task_aware", "kwargs": {"routes": routes}}
    for row in r["tasks"].values():
      row["efficiency"] = efficiency_weight
  else:
    # Not computed at all before the efficiency stage (it would call the verifiers twice).
    del r["objectives"]["efficiency"]
  r["default_task"] = {}
  r["strict_tasks"] = True  # a record of an unrouted task fails instead of training on nothing
  return r


def _rl_stage(args, steps: int, efficiency_weight: float) -> dict:
  return dict(
      kind="rl",
      steps=steps,
      prompts_per_step=128,  # the public script's rollout batch
      mixture={"safety": 1.0, "value": 1.0, "knowledge": 1.0},
      recipe=recipe(args, efficiency_weight),
      sampling=dict(group_size=8, max_new_tokens=4096, temperature=1.0),
      learner=dict(
          # CPGD's clipped policy-gradient loss (the public script's --use_cpg_loss, without
          # --use_policy_drift), eps 0.2, each sequence's token mean averaged over sequences;
          # 0.001 x k3 KL to the reference (the policy at the stage's start).
          loss=dict(loss_type="cpgd", eps_low=0.2, eps_high=0.2, drift_coef=0.0, kl_coef=0.001,
                    kl_estimator="k3", aggregation="seq-mean-token-mean"),
          # Every sample has one verifier (plus efficiency): its reward is group-normalized.
          advantage=dict(estimator="grpo", mode="sum_then_normalize"),
          num_epochs=1,
          # 8 minibatches of 16 groups (128 sequences, 4 per chip on a v5p-64): the learner
          # has no gradient accumulation, and 4096-token completions make sequences long.
          num_minibatches=8,
          logprob_backend="xla",
      ),
      optimizer=dict(learning_rate=1e-6, schedule="constant", warmup_steps=max(steps // 33, 1),
                     weight_decay=0.01, max_grad_norm=1.0),
  )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment; `arg` as in the module docstring."""
  args = common.parse_arg(arg, model="", data="", ext="jsonl", workdir="runs/safework_r1_7b",
                          safety_verifier="", value_verifier="", knowledge_verifier="",
                          verifier="reward_model", efficiency_weight=0.5, sft_steps=1000,
                          rl_steps=500, efficiency_steps=200, smoke=False)
  common.require(args, "configs/safework_r1_7b.py", "model", "data")
  if not args.efficiency_weight > 0:
    raise ValueError("configs/safework_r1_7b.py: efficiency_weight must be > 0 (the efficiency "
                     f"stage's weight); got {args.efficiency_weight}")
  c = ml_collections.ConfigDict()
  common.qwen2_5_vl_7b(c, args)
  c.data = dict(
      kind="files",
      sources=common.file_sources(args.data, _FILES, args.ext),
      max_length=4096,  # an image, the question and a chain of thought
      prompt_length_buckets=(512, 1024),
      max_images_per_example=1,
  )

  c.stage_order = ("cot_sft", "rl_multiobjective", "rl_efficiency")
  c.stages = ml_collections.ConfigDict()
  c.stages.cot_sft = dict(
      kind="sft",
      steps=args.sft_steps,
      batch_size=128,  # 4 sequences per chip on 32 chips, 16 per GPU on 8 x H100
      mixture={"sft": 1.0},
      # The usual full fine-tuning schedule of a 7B instruct model (1e-5, 3% warmup, cosine).
      optimizer=dict(learning_rate=1e-5, schedule="cosine", warmup_steps=30,
                     total_steps=args.sft_steps, final_lr_ratio=0.1, weight_decay=0.0,
                     max_grad_norm=1.0),
      learner=dict(logprob_backend="xla"),
  )
  # M3-RL: Safety, Value and Knowledge together, weight 1.0 each.
  c.stages.rl_multiobjective = _rl_stage(args, args.rl_steps, efficiency_weight=0.0)
  # Safe-and-efficient RL: overthinking is penalized, but only on correct answers.
  c.stages.rl_efficiency = _rl_stage(args, args.efficiency_steps, args.efficiency_weight)

  if args.smoke:
    common.shrink_for_smoke(c)
  return c
