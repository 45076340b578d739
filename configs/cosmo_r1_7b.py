r"""CoSMo-RL on Qwen2.5-VL-7B-Instruct: SFT, RL stage 1 (general), RL stage 2 (safety + value
+ general, with multimodal jailbreak augmentation), CPGD with its public defaults.

    python experiments/train.py \
        --config=configs/cosmo_r1_7b.py:model=/ckpt/Qwen2.5-VL-7B-Instruct,data=/data/cosmo
    # learned outcome reward models for the Task-Aware term (else the rule-based verifiers)
    RMS=safety_rm=/ckpt/safety_rm,value_rm=/ckpt/value_rm,knowledge_rm=/ckpt/knowledge_rm
    python experiments/train.py \
        --config=configs/cosmo_r1_7b.py:model=/ckpt/Qwen2.5-VL-7B-Instruct,data=/data/cosmo,$RMS
    # on a TPU pod or GPU cluster: experiments/launch_xm.py builds this command per host

Arguments (`key=value`, comma-separated): model (local Hugging Face directory, also the
tokenizer), data (directory of the files below), ext (jsonl | parquet), workdir,
safety_rm / value_rm / knowledge_rm (learned verifier directories, `cosmojax.rewards
.verifier_spec`; empty: the rule-based Safety, Value and accuracy verifiers), verifier
(reward_model | judge: the kind of those directories), sft_steps, rl1_steps, rl2_steps, smoke
(every size shrunk to a few CPU steps with a tiny checkpoint; what the tests run).

Data files in `data` (records as `cosmojax.data.read_jsonl` documents them; the response
format of SFT targets is `<think>…</think><answer>…</answer>`):
    sft        SFT conversations ending with the assistant target (task "sft")
    general    general-capability prompts with ground truths (VQA, charts, math), visual key
               facts for Visual-Focus (task "general")
    unsafe     harmful requests, `safety.unsafe` true (task "unsafe")
    benign     safe requests that look risky, to keep over-refusal down (task "benign")
    value      value-alignment prompts with a `preferred` answer (task "value")
    eval       held-out prompts of every kind (split "eval"; each record names its task)

Settings from the CoSMo-RL / CPGD public defaults: CPGD clip eps 0.2, policy drift 0.01,
8 samples per prompt, learning rate 1e-6, temperature 1.0, no KL to the reference model.
The other sizes (prompts per step, lengths, SFT schedule, step counts) are our choices, each
explained where it is set.

What the runner does not do yet (not faked here):
  - fit these batch sizes: compiled for v5p, SFT of 8 x 2048 tokens with a 448 px image per
    sequence needs 185 GiB per chip, the RL update of 8 x 2048 tokens 187 GiB (the memory
    note in configs/common.py has the figures and what the runner needs first).
  - gradient accumulation: a minibatch of the RL update (prompts_per_step / num_minibatches
    groups) is one forward/backward over all devices; the SFT batch likewise.
  - the Pallas log-prob kernels cannot be partitioned by XLA (compiling for v5p: "Mosaic
    kernels cannot be automatically partitioned", they need a shard_map; the Triton GPU
    kernels are custom calls too, not checked), so `logprob_backend` is the chunked XLA path.
"""

from __future__ import annotations

import ml_collections

from configs import common
from cosmojax.rewards import REWARD_RECIPES, verifier_spec

# CoSMo-RL's response format: reasoning, then the answer.
TAGS = ("think", "answer")
_FILES = {  # name: (task of records without one, split)
    "sft": ("sft", "train"), "general": ("general", "train"), "unsafe": ("unsafe", "train"),
    "benign": ("benign", "train"), "value": ("value", "train"), "eval": ("general", "eval"),
}


def recipe(args: ml_collections.ConfigDict) -> dict:
  """CoSMo-RL's reward (`REWARD_RECIPES["cosmo_rl"]`: Format, Visual-Focus, Helpful,
  Task-Aware) routed to the tasks of the data files."""
  r = REWARD_RECIPES.get("cosmo_rl")(tags=TAGS)
  task_aware = r["objectives"]["task_aware"]["kwargs"]
  # Task-Aware picks a sample's verifier from its labels (unsafe -> Safety, a preferred answer
  # -> Value, a ground truth -> Knowledge); the suite's per-task routes do not apply here.
  task_aware["routes"] = {}
  for kind, path in (("safety", args.safety_rm), ("value", args.value_rm),
                     ("knowledge", args.knowledge_rm)):
    if path:
      task_aware[kind] = verifier_spec(kind, path, model=args.verifier)
  all_four = {"format": 1.0, "visual_focus": 1.0, "helpful": 1.0, "task_aware": 1.0}
  r["tasks"] = {
      "general": all_four, "value": all_four, "benign": all_four,
      # Helpfulness does not apply to a harmful request and describing the image is no goal.
      "unsafe": {"format": 1.0, "task_aware": 1.0},
  }
  r["default_task"] = {}
  r["strict_tasks"] = True  # a record of an unrouted task fails instead of training on nothing
  return r


def _rl_stage(args, steps: int, mixture: dict[str, float], jailbreak: dict | None) -> dict:
  return dict(
      kind="rl",
      steps=steps,
      # 128 prompts x 8 samples = 1024 completions per step, 4 optimizer steps of 32 groups
      # (256 sequences: 8 per chip on a v5p-64, 32 chips; 32 per GPU on 8 x H100).
      prompts_per_step=128,
      mixture=mixture,
      recipe=recipe(args),
      # CPGD's public defaults: 8 samples per prompt at temperature 1.0; 2048 new tokens
      # hold a reasoning chain and its answer (longer ones are truncated: no answer, format 0).
      sampling=dict(group_size=8, max_new_tokens=2048, temperature=1.0),
      learner=dict(
          # CPGD: clipped log-ratio policy gradient, eps 0.2, policy drift 0.01, no KL.
          loss=dict(loss_type="cpgd", eps_low=0.2, eps_high=0.2, drift_coef=0.01,
                    drift_clip=0.2, kl_coef=0.0, aggregation="token-mean"),
          # Each objective normalized within its group (CPGD's STD weight), then weighted:
          # a term with little spread cannot drown the others.
          advantage=dict(estimator="cpgd_std", mode="normalize_then_sum"),
          num_epochs=1,
          num_minibatches=4,
          logprob_backend="xla",
      ),
      # CPGD: 1e-6, constant after a short warmup; the policy stays close to the SFT model.
      optimizer=dict(learning_rate=1e-6, schedule="constant", warmup_steps=10,
                     weight_decay=0.0, max_grad_norm=1.0),
      jailbreak=jailbreak,
  )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The experiment; `arg` as in the module docstring."""
  args = common.parse_arg(arg, model="", data="", ext="jsonl", workdir="runs/cosmo_r1_7b",
                          safety_rm="", value_rm="", knowledge_rm="", verifier="reward_model",
                          sft_steps=1000, rl1_steps=300, rl2_steps=500, smoke=False)
  common.require(args, "configs/cosmo_r1_7b.py", "model", "data")
  c = ml_collections.ConfigDict()
  common.qwen2_5_vl_7b(c, args)
  c.data = dict(
      kind="files",
      sources=common.file_sources(args.data, _FILES, args.ext),
      # An SFT example: up to 1024 image tokens, the question and a reasoning target.
      max_length=4096,
      # RL prompts: an image and a question; two buckets so text-only prompts stay short.
      prompt_length_buckets=(512, 1024),
      max_images_per_example=2,  # a jailbreak image comes on top of the original one
  )

  c.stage_order = ("sft", "rl_general", "rl_joint")
  c.stages = ml_collections.ConfigDict()
  c.stages.sft = dict(
      kind="sft",
      steps=args.sft_steps,
      batch_size=128,  # 4 sequences per chip on 32 chips, 16 per GPU on 8 x H100
      mixture={"sft": 1.0},
      # The usual full fine-tuning schedule of a 7B instruct model: 1e-5 peak, 3% warmup,
      # cosine to 10%; no weight decay, the start is a pretrained model, not a random one.
      optimizer=dict(learning_rate=1e-5, schedule="cosine", warmup_steps=30,
                     total_steps=args.sft_steps, final_lr_ratio=0.1, weight_decay=0.0,
                     max_grad_norm=1.0),
      learner=dict(logprob_backend="xla"),
  )
  # Stage 1: general capability alone, so that stage 2 starts from a strong reasoner.
  c.stages.rl_general = _rl_stage(args, args.rl1_steps, {"general": 1.0}, jailbreak=None)
  # Stage 2: safety, value and general capability together, in equal parts: general stays so
  # that capability does not regress while safety is learned.
  c.stages.rl_joint = _rl_stage(
      args, args.rl2_steps, {"general": 1.0, "unsafe": 1.0, "benign": 1.0, "value": 1.0},
      # Unsafe requests are disguised as multimodal jailbreaks on the fly (typographic,
      # query-relevant image, split intent; 60% of them), benign ones too, so that the
      # disguise alone does not signal harm. 448 px keeps the rendered text legible.
      jailbreak=dict(typographic_rate=0.2, query_image_rate=0.2, split_intent_rate=0.2,
                     image_size=448, safe_tasks=("benign",)))

  if args.smoke:
    common.shrink_for_smoke(c)
  return c
