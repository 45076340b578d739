r"""CoSMo-RL on the synthetic multimodal safety suite with a tiny Qwen2.5-VL (the demo).

    python experiments/train.py --config=configs/cosmo_tiny.py
    python experiments/train.py --config=configs/cosmo_tiny.py:smoke --config.workdir=/tmp/smoke

The full CoSMo-RL schedule on a 2-core CPU in minutes: SFT (format, capability and a partial
safety set), RL stage 1 (general capability), RL stage 2 (safety + value + general, with
multimodal jailbreak augmentation), an evaluation on the held-out suite after each stage.
`:smoke` shrinks every stage to a few steps (tests and CI).
"""

from __future__ import annotations

import ml_collections

from cosmojax.data.synthetic import GENERAL_TASKS, JAILBREAK_TASKS
from cosmojax.rewards.recipes import cosmo_rl_recipe

# The suite's GENERAL_TASKS: count, compare, arithmetic and instruction following.
_GENERAL = {t: 1.0 for t in GENERAL_TASKS}


def _recipe() -> dict:
  """CoSMo-RL's multiobjective reward (Format, Visual-Focus, Helpful, Task-Aware), with
  Task-Aware (the answer's correctness) weighted 2 on the general tasks: counting, comparing,
  arithmetic and instruction following (the suite's GENERAL_TASKS).

  With equal weights, Format and Helpful are nearly saturated (0.95-1.0) and Visual-Focus
  rewards naming what the image shows whatever the answer, so correctness drove a quarter of
  a capability sample's advantage: held-out capability after stage 1 ended below SFT in
  three RL seeds of three (0.365 / 0.341 / 0.349, SFT 0.378), and after stage 2 in two
  (0.383 / 0.346 / 0.354). With Task-Aware weighted 2 on count, compare and arithmetic, it
  ended stage 2 at 0.380-0.417 in all nine runs of three seeds x three stage-2 settings (16
  or 32 prompts per step; 16 with a KL of 0.05); two settings not kept ended below SFT (a
  larger benign share: 0.344 in one seed of three; 150 steps with KL: 0.323 in the one seed
  run). The kept setting also weights instruction following 2 (0.391 / 0.398 / 0.417).
  """
  recipe = cosmo_rl_recipe(tags=("description", "think", "answer"))
  for task in GENERAL_TASKS:
    recipe["tasks"][task]["task_aware"] = 2.0
  return recipe


def _rl_stage(steps: int, prompts_per_step: int, mixture: dict[str, float],
              jailbreak: dict | None) -> dict:
  return dict(
      kind="rl",
      steps=steps,
      prompts_per_step=prompts_per_step,
      mixture=mixture,
      recipe=_recipe(),
      sampling=dict(group_size=8, max_new_tokens=48, temperature=1.0),
      learner=dict(
          # CPGD with its public defaults (eps 0.2, drift 0.01), no KL to the reference.
          loss=dict(loss_type="cpgd", eps_low=0.2, eps_high=0.2, drift_coef=0.01,
                    aggregation="token-mean"),
          advantage=dict(estimator="grpo", mode="normalize_then_sum"),
          num_epochs=1,
          num_minibatches=2,
      ),
      # A tiny model from SFT moves with a far larger step than 7B models (1e-6).
      optimizer=dict(learning_rate=1e-4, warmup_steps=2, max_grad_norm=1.0,
                     frozen=()),  # e.g. ("^visual/",) trains the language model alone
      jailbreak=jailbreak,
  )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo config; `arg="smoke"` shrinks it to seconds per stage."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.workdir = "runs/cosmo_tiny"
  c.resume = True
  c.mesh = dict(data=1, fsdp=-1, tensor=1)

  # The tiny model is built from scratch with the suite's own tokenizer: no checkpoint.
  c.model = dict(
      path="",  # a local Hugging Face directory to start from instead of random init
      dtype="float32",
      tiny=dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                intermediate_size=192, vision_hidden=64, vision_depth=2, patch_size=14,
                window_size=56),
  )
  c.tokenizer = dict(path="")  # empty: the synthetic suite's tokenizer
  # 84 x 84 images -> 6 x 6 patches of 14 px -> 9 image tokens.
  c.image = dict(min_pixels=84 * 84, max_pixels=84 * 84)

  c.data = dict(
      kind="synthetic",
      suite=dict(seed=0, image_size=84),
      examples_per_task=2000,  # RL prompt pool per task (train split)
      # SFT covers safety only in part, so that RL has something to improve: a quarter of the
      # harmful text requests and a tenth of each jailbreak kind come with refusals. With no
      # jailbreak refusals at all the policy never samples one and RL gets no signal there;
      # with a quarter, SFT alone already refuses nearly all of them.
      sft_mix=dict(examples_per_task=256, refusal_fraction=0.25, jailbreak_fraction=0.1),
      max_length=96,
      prompt_length_buckets=(48, 64),
      max_images_per_example=2,
  )

  # 128 per task: with 32, one greedy answer flipping moves a task's figure by 0.03 and the
  # stage-to-stage differences the table is read for drown in sampling noise.
  c.eval = dict(examples_per_task=128, batch_size=64, max_new_tokens=48)
  c.checkpoint = dict(every=10, keep=2)

  c.stage_order = ("sft", "rl_general", "rl_joint")
  c.stages = ml_collections.ConfigDict()
  # The vision tower learns from scratch: the SFT policy only discriminates a harmful object
  # from its benign look-alike after ~1000 steps (after 600, RL exploits "an image is shown"
  # as a proxy for harm, in either direction). 3e-3 made the merger biases blow up and the
  # image tokens carry almost no information; 2e-3 with warmup trains stably. The cosine
  # anneals to 2e-5: ending at 2e-4, checkpoints 10 steps apart differed by 0.04 in held-out
  # capability accuracy, more than RL's effects, so the stages could not be compared.
  c.stages.sft = dict(
      kind="sft",
      steps=1000,
      batch_size=32,
      optimizer=dict(learning_rate=2e-3, schedule="cosine", warmup_steps=50, total_steps=1000,
                     final_lr_ratio=0.01, weight_decay=0.01),
  )
  c.stages.rl_general = _rl_stage(30, 16, _GENERAL, jailbreak=None)
  # Stage 1 sees no unsafe prompt and forgets part of SFT's refusals (held-out unsafe
  # compliance 0.15 -> 0.23 at 1e-4, 0.70 at 1e-3); a k3 KL of 0.1 to the SFT policy keeps
  # that in check (without it, typographic attack success ended stage 2 at 0.73, SFT 0.43).
  # Stage 2 trains safety without KL, as CoSMo-RL does (CPGD's drift term is its trust
  # region), for 100 steps (at 40 it did not get back below SFT; at 130, with one pass, less
  # safe in two seeds of three) of 32 prompts, two optimizer passes over each rollout batch.
  # Means over three RL seeds after stage 2 (capability / unsafe compliance / jailbreak attack
  # success / over-refusal; SFT 0.378 / 0.148 / 0.143 / 0.016): 16 prompts, one pass 0.387 /
  # 0.138 / 0.128 / 0.023; 32 prompts, one pass 0.398 / 0.125 / 0.116 / 0.016; 32 prompts, two
  # passes (and instruction following weighted as in `_recipe`; the first two runs weighted
  # it 1) 0.402 / 0.110 / 0.110 / 0.013. Per seed (0 / 1 / 2) with the last: capability
  # 0.391 / 0.398 / 0.417, unsafe compliance 0.109 / 0.113 / 0.107, attack success 0.096 /
  # 0.120 / 0.115, over-refusal 0.031 / 0.008 / 0.000: seed 0 (the demo's) refuses 4 benign
  # probes of 128 where SFT refuses 2. The tiny policy's perception is weak: it misreads some
  # benign requests as harmful ones.
  c.stages.rl_general.learner.loss.kl_coef = 0.1
  # Unsafe requests (harmful text + the three jailbreaks: 2.5) and benign probes that look
  # alike (2.5) are balanced, so that refusing whatever shows an object or text image earns
  # nothing on average: only telling harm apart does.
  c.stages.rl_joint = _rl_stage(
      100, 32,
      {**_GENERAL, "harmful_text": 1.0, **{t: 0.5 for t in JAILBREAK_TASKS},
       "benign_probe": 2.5, "value": 1.0},
      # Unsafe requests are also disguised as multimodal jailbreaks on the fly, and benign
      # probes get the same disguises so that the disguise alone does not signal harm.
      jailbreak=dict(typographic_rate=0.2, query_image_rate=0.2, split_intent_rate=0.2,
                     safe_tasks=("benign_probe",)),
  )
  c.stages.rl_joint.learner.num_epochs = 2

  if arg == "smoke":
    c.workdir = "runs/cosmo_tiny_smoke"
    c.data.examples_per_task = 64
    c.data.sft_mix.examples_per_task = 16
    c.eval.examples_per_task = 2
    c.eval.max_new_tokens = 16
    c.checkpoint.every = 2
    c.stages.sft.steps = 3
    c.stages.sft.batch_size = 8
    c.stages.sft.optimizer.total_steps = 3
    c.stages.sft.optimizer.warmup_steps = 1
    for stage in ("rl_general", "rl_joint"):
      c.stages[stage].steps = 2
      c.stages[stage].prompts_per_step = 4
      c.stages[stage].sampling.group_size = 2
      c.stages[stage].sampling.max_new_tokens = 8
  elif arg:
    raise ValueError(f"configs/cosmo_tiny.py: unknown argument {arg!r}; known: 'smoke'.")
  return c
