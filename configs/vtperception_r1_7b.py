r"""VTPerception-R1 on Qwen2.5-VL-7B-Instruct: perception-augmented SFT, then DAPO-style RL
with the six-term perception reward and its perception-first schedule.

    python experiments/train.py \
        --config=configs/vtperception_r1_7b.py:model=/ckpt/Qwen2.5-VL-7B-Instruct,data=/data/vtp

Arguments (`key=value`, comma-separated): model (local Hugging Face directory, also the
tokenizer), data (directory of the files below), ext (jsonl | parquet), workdir, sft_steps,
rl_steps, smoke (every size shrunk to a few CPU steps with a tiny checkpoint; the tests).

Data files in `data` (records as `cosmojax.data.read_jsonl` documents them):
    sft    perception-augmented SFT: targets `<description>…</description><think>…</think>
           <answer>…</answer>` (task "sft")
    vqa    visual questions with ground truths, `visual_key_facts` (what a correct
           description contains) and `textual_key_facts` (what the reasoning uses) (task "vqa")
    math   visual math whose answer is derived in the reasoning, not read off the image: the
           consistency term checks the answer against the description, question and reasoning
           (task "math")
    eval   held-out prompts (split "eval")

Stage 2 is DAPO-style: clip-higher (eps_low 0.2, eps_high 0.28), token-level loss
(token-mean over all response tokens of the minibatch), no KL term, dynamic sampling; reward
R_acc + R_fmt + R_vkey + R_tkey + R_rep + R_cons (`REWARD_RECIPES["vtperception_r1"]`), the
visual- and textual-key weights decaying from 2.0 to 0.5 over the stage (perception first).

What the runner does not do yet (not faked here):
  - DAPO's dynamic sampling oversamples and refills the batch with informative groups; ours
    only drops the groups whose rewards have no spread (`advantage.dynamic_sampling`), so a
    step trains on fewer groups (logged as advantages/kept_fraction).
  - DAPO's soft overlong punishment: `cosmojax.rl.overlong_penalty` computes it, but neither
    the reward recipes nor the RL trainer apply it (reward functions see decoded text, not
    token counts). A truncated sample has no closed <answer>, so its accuracy and format
    rewards are 0 anyway.
  - fit these batch sizes on v5p or H100 (memory note in configs/common.py), gradient
    accumulation, and the Pallas log-prob kernels under XLA partitioning (the XLA path is
    used; see configs/cosmo_r1_7b.py).
"""

from __future__ import annotations

import ml_collections

from configs import common
from cosmojax.rewards import DEFAULT_TAGS, REWARD_RECIPES

_FILES = {  # name: (task of records without one, split)
    "sft": ("sft", "train"), "vqa": ("vqa", "train"), "math": ("math", "train"),
    "eval": ("vqa", "eval"),
}


def recipe(rl_steps: int) -> dict:
  """VTPerception-R1's six-term reward (`REWARD_RECIPES["vtperception_r1"]`) routed to the
  tasks of the data files, the perception terms decaying over the whole RL stage."""
  r = REWARD_RECIPES.get("vtperception_r1")(tags=DEFAULT_TAGS, perception_start=2.0,
                                            perception_end=0.5, perception_steps=rl_steps)
  consistency = r["objectives"]["consistency"]["kwargs"]
  # Derived answers: the reasoning (and the question) supports them, as for the suite's
  # arithmetic task.
  consistency["routes"] = {"math": consistency["routes"]["arithmetic"]}
  six = {n: 1.0 for n in ("accuracy", "format", "visual_key", "textual_key", "repetition",
                          "consistency")}
  r["tasks"] = {"vqa": six, "math": dict(six)}
  r["default_task"] = {}
  r["strict_tasks"] = True  # a record of an unrouted task fails instead of training on nothing
  return r


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment; `arg` as in the module docstring."""
  args = common.parse_arg(arg, model="", data="", ext="jsonl",
                          workdir="runs/vtperception_r1_7b", sft_steps=1000, rl_steps=500,
                          smoke=False)
  common.require(args, "configs/vtperception_r1_7b.py", "model", "data")
  c = ml_collections.ConfigDict()
  common.qwen2_5_vl_7b(c, args)
  c.data = dict(
      kind="files",
      sources=common.file_sources(args.data, _FILES, args.ext),
      # Description + reasoning + answer targets are long: 4096 tokens with the image.
      max_length=4096,
      prompt_length_buckets=(512, 1024),
      max_images_per_example=1,
  )

  c.stage_order = ("sft", "rl")
  c.stages = ml_collections.ConfigDict()
  c.stages.sft = dict(
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
  c.stages.rl = dict(
      kind="rl",
      steps=args.rl_steps,
      # 128 prompts x 8 samples per step, 4 optimizer steps of 32 groups (DAPO's minibatch of
      # 32 prompts; its 512-prompt rollouts are cut to 128 to keep a step minutes long).
      prompts_per_step=128,
      mixture={"vqa": 1.0, "math": 1.0},
      recipe=recipe(args.rl_steps),
      # 2048 new tokens: a description, a reasoning chain and the answer.
      sampling=dict(group_size=8, max_new_tokens=2048, temperature=1.0),
      learner=dict(
          # DAPO: clip-higher (0.2 / 0.28), token-level mean, no drift and no KL.
          loss=dict(loss_type="dapo", eps_low=0.2, eps_high=0.28, drift_coef=0.0,
                    kl_coef=0.0, aggregation="token-mean"),
          # The six terms are summed with their (scheduled) weights into one reward, which is
          # group-normalized (GRPO); groups without reward spread are dropped.
          advantage=dict(estimator="grpo", mode="sum_then_normalize", dynamic_sampling=True),
          num_epochs=1,
          num_minibatches=4,
          logprob_backend="xla",
      ),
      # DAPO: 1e-6 after a linear warmup of 10 steps, constant.
      optimizer=dict(learning_rate=1e-6, schedule="constant", warmup_steps=10,
                     weight_decay=0.0, max_grad_norm=1.0),
  )

  if args.smoke:
    common.shrink_for_smoke(c)
  return c
