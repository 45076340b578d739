"""Data passed between the stages of cosmojax.

`Example` is the one record schema for SFT, RL and evaluation: data readers and the synthetic
suite produce it, chat formatting turns it into tokens, reward functions and evaluators read
its labels. Device-side pytrees (prompt batches, rollouts) are defined next to it as the
stages that produce them land.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.struct

# Roles of chat messages, as in Hugging Face chat templates.
ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class SafetyLabel:
  """Whether complying with a request is harmful.

  Attributes:
    unsafe: True when a helpful answer would cause harm: the policy should refuse.
    category: harm category ("weapons", "self_harm", ...) or "" for safe requests.
    attack: how the request is disguised: "" (plain), "typographic", "query_relevant_image",
      "split_intent" (multimodal jailbreaks), or a text jailbreak name.
  """

  unsafe: bool = False
  category: str = ""
  attack: str = ""


@dataclasses.dataclass(frozen=True)
class Example:
  """One multimodal example, shared by SFT, RL and evaluation.

  Attributes:
    id: unique, stable identifier (used in logs and error messages).
    task: task name; reward recipes route on it.
    messages: the conversation in Hugging Face chat format: dicts with "role" and "content",
      content a string or a list of parts {"type": "text", "text": ...} /
      {"type": "image"} (the k-th image part refers to images[k]). For SFT the last message is
      the assistant target; for RL and evaluation the conversation ends with a user turn.
    images: the images referenced by the image parts, in order: uint8 arrays [H, W, 3] or
      paths to local image files (loaded by the data pipeline).
    ground_truth: the reference answer, if the task has one ("3", "B", "x^2", ...).
    answer_type: how `ground_truth` is checked: "choice", "number", "math", "text" (the whole
      answer), "word" (the answer contains it as a word, ignoring case), or "" when there is
      none (open-ended or safety-only examples).
    choices: the options of a multiple-choice question, if any.
    safety: the safety label of the request.
    visual_key_facts: facts a correct perception of the image contains (VTPerception's
      R_vkey, CoSMo's Visual-Focus).
    textual_key_facts: facts the reasoning should use (VTPerception's R_tkey).
    preferred: for value judgements, the preferred answer (a choice letter or text).
    instructions: checkable constraints on the answer for instruction-following tasks, as
      "name" or "name:argument" strings (e.g. "uppercase", "max_words:5", "end_with:done");
      the instruction-following reward owns the registry of names.
    source: data set or generator name.
    metadata: anything else (difficulty, split, ...); never read by the core framework.
  """

  id: str
  task: str
  messages: tuple[Mapping[str, Any], ...]
  images: tuple[Any, ...] = ()
  ground_truth: str | None = None
  answer_type: str = ""
  choices: tuple[str, ...] = ()
  safety: SafetyLabel = SafetyLabel()
  visual_key_facts: tuple[str, ...] = ()
  textual_key_facts: tuple[str, ...] = ()
  preferred: str | None = None
  instructions: tuple[str, ...] = ()
  source: str = ""
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not self.id:
      raise ValueError("Example.id must be a non-empty string.")
    if not self.messages:
      raise ValueError(f"Example {self.id!r}: messages is empty.")
    for i, message in enumerate(self.messages):
      if message.get("role") not in ROLES:
        raise ValueError(
            f"Example {self.id!r}: messages[{i}].role is {message.get('role')!r}; "
            f"expected one of {ROLES}."
        )
    n_image_parts = sum(
        1
        for m in self.messages
        if not isinstance(m.get("content"), str)
        for part in m.get("content", ())
        if part.get("type") == "image"
    )
    if n_image_parts != len(self.images):
      raise ValueError(
          f"Example {self.id!r}: {n_image_parts} image parts in messages but "
          f"{len(self.images)} images."
      )

  @property
  def prompt_messages(self) -> tuple[Mapping[str, Any], ...]:
    """The conversation without a trailing assistant target."""
    if self.messages[-1]["role"] == "assistant":
      return self.messages[:-1]
    return self.messages

  @property
  def target(self) -> str | None:
    """The assistant target text (SFT), or None."""
    last = self.messages[-1]
    if last["role"] != "assistant":
      return None
    return message_text(last)

  @property
  def prompt_text(self) -> str:
    """The text of the last user turn (what reward functions read as "the request")."""
    for message in reversed(self.messages):
      if message["role"] == "user":
        return message_text(message)
    return ""


def message_text(message: Mapping[str, Any]) -> str:
  """Concatenates the text parts of a chat message."""
  content = message.get("content", "")
  if isinstance(content, str):
    return content
  return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def text_message(role: str, text: str) -> dict[str, Any]:
  return {"role": role, "content": text}


def user_message(text: str, num_images: int = 0) -> dict[str, Any]:
  """A user turn with `num_images` image parts followed by the text."""
  parts: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
  parts.append({"type": "text", "text": text})
  return {"role": "user", "content": parts}


def examples_field(examples: Sequence[Example], name: str) -> list[Any]:
  """The values of one field over a batch of examples."""
  return [getattr(e, name) for e in examples]


# --- Device-side batches produced by the data pipeline (cosmojax.data) ----------------------
#
# Shapes are static per bucket: T is a token-length bucket, P a patch-count bucket and I the
# number of image slots of `cosmojax.data.BatchSpec`, so a jitted step compiles once per
# (T, P) bucket pair. Images of all rows are concatenated in row order (and in order within a
# row); the k-th valid row of `image_grid_thw` belongs to the k-th run of `<|image_pad|>`
# tokens in `input_ids` read row by row, and that run holds
# grid_t * grid_h * grid_w // merge_size**2 tokens. Rows of `pixel_values` after the
# sum(grid_t * grid_h * grid_w) valid patches, and rows of `image_grid_thw` after the valid
# images, are zero padding: the vision tower must ignore them (no placeholder consumes them).


@flax.struct.dataclass
class SFTBatch:
  """A supervised (SFT) batch, right-padded.

  Attributes:
    input_ids: [B, T] int32 token ids, padded on the right with the pad id.
    attention_mask: [B, T] int32, 1 on real tokens, 0 on padding.
    loss_mask: [B, T] int32, 1 where input_ids[b, t] is a target (assistant) token: the
      logits at t - 1 are trained to predict it. Image tokens and prompts are 0.
    pixel_values: [P, C * temporal_patch_size * patch_size**2] float32 image patches.
    image_grid_thw: [I, 3] int32 (grid_t, grid_h, grid_w) per image; zero rows are padding.
    task_ids: [B] int32 index of each row's task in `BatchMeta.task_names`; -1 on padding rows.
    example_mask: [B] bool, False on padding rows (a short final batch of a finite pass).
    position_ids: [3, B, T] int32 M-RoPE positions (temporal, height, width) when the
      pipeline was given a `position_fn`, else None (the model derives them).
  """

  input_ids: Any
  attention_mask: Any
  loss_mask: Any
  pixel_values: Any
  image_grid_thw: Any
  task_ids: Any
  example_mask: Any
  position_ids: Any = None


@flax.struct.dataclass
class PromptBatch:
  """Prompts for rollout or evaluation, left-padded so that generation starts at T.

  Every prompt ends with the generation prompt `<|im_start|>assistant\\n`.

  Attributes:
    input_ids: [B, T] int32 token ids, padded on the left with the pad id.
    attention_mask: [B, T] int32, 1 on real tokens, 0 on padding.
    pixel_values: [P, C * temporal_patch_size * patch_size**2] float32 image patches.
    image_grid_thw: [I, 3] int32 (grid_t, grid_h, grid_w) per image; zero rows are padding.
    task_ids: [B] int32 index of each row's task in `BatchMeta.task_names`; -1 on padding rows.
    example_mask: [B] bool, False on padding rows.
    position_ids: [3, B, T] int32 M-RoPE positions, or None (see SFTBatch).
    rope_deltas: [B] int32 M-RoPE offset of the first generated position relative to T
      (what decoding adds to its text positions), or None with position_ids.
  """

  input_ids: Any
  attention_mask: Any
  pixel_values: Any
  image_grid_thw: Any
  task_ids: Any
  example_mask: Any
  position_ids: Any = None
  rope_deltas: Any = None


@dataclasses.dataclass(frozen=True)
class BatchMeta:
  """Host-side companion of a device batch: which examples its rows hold.

  Attributes:
    examples: per row, the source `Example` (labels for rewards and evaluation), or None on
      padding rows.
    task_names: the task vocabulary that `task_ids` index.
  """

  examples: tuple[Example | None, ...]
  task_names: tuple[str, ...]

  @property
  def ids(self) -> tuple[str, ...]:
    """Example ids per row ("" on padding rows)."""
    return tuple(e.id if e is not None else "" for e in self.examples)

  @property
  def tasks(self) -> tuple[str, ...]:
    """Task names per row ("" on padding rows)."""
    return tuple(e.task if e is not None else "" for e in self.examples)


# --- Rollouts produced by the sampler (cosmojax.rollout) ------------------------------------
#
# N = B * G samples: prompt b of the PromptBatch gives the G consecutive samples
# b*G .. b*G + G - 1. T_p is the (bucketed) prompt length, T_n the completion-length bucket
# (>= the max_new_tokens asked for), T = T_p + T_n.


@flax.struct.dataclass
class Rollout:
  """G sampled completions per prompt, with what rewards and the learner need.

  Attributes:
    tokens: [N, T] int32 prompt (left-padded) then completion; completion slots after a
      sample's last token hold the pad id.
    attention_mask: [N, T] int32, the prompt's mask then `completion_mask`: the mask of the
      learner's full forward over prompt + completion.
    completion_mask: [N, T_n] int32 over the completion part only (tokens[:, T_p:]): 1 on the
      generated tokens, the EOS token or the tokens of a matched stop sequence included
      (they were sampled, so they are trained), 0 after them. On the full sequence it is
      `attention_mask[:, T_p:]`; the prompt part is never a completion.
    logprobs: [N, T_n] float32 log-probability of each sampled token under the distribution
      it was actually drawn from: softmax(logits / temperature) restricted to the top-k /
      top-p set and renormalised (greedy: log_softmax(logits) at temperature 1, no filtering).
      0 where completion_mask is 0.
    position_ids: [3, N, T] int32 M-RoPE positions (temporal, height, width) of the full
      sequence: the prompt's, then next_position + 0, 1, ... for the completion, where
      next_position = max prompt position + 1 (all three rows equal there). Text-only
      models have three equal rows.
    prompt_index: [N] int32 row of the prompt batch each sample came from (b = n // G). The
      samples of one prompt form one group: this is the `group_ids` of `cosmojax.rl`.
    sample_index: [N] int32 index of the sample within its group (n % G).
    lengths: [N] int32 completion lengths (= completion_mask.sum(-1)).
    truncated: [N] bool, the sample hit max_new_tokens without EOS or a stop sequence.
    task_ids: [N] int32 the prompt's task id (-1 on padding prompts).
    sample_mask: [N] bool, False for the samples of padding prompts (example_mask False);
      those are never generated (length 0).
    pixel_values: [P, patch_dim] the prompt batch's image patches (per prompt, not per
      sample: the learner encodes them once and expands them with
      `cosmojax.rollout.per_sample_image_embeds`).
    image_grid_thw: [I, 3] int32 the prompt batch's image grids (zero rows are padding).
    vision_meta: the host-computed `cosmojax.models.VisionMeta` of those images (padded to
      P patches), or None without image patches.
    group_size: G (static: not a pytree leaf).
  """

  tokens: Any
  attention_mask: Any
  completion_mask: Any
  logprobs: Any
  position_ids: Any
  prompt_index: Any
  sample_index: Any
  lengths: Any
  truncated: Any
  task_ids: Any
  sample_mask: Any
  pixel_values: Any = None
  image_grid_thw: Any = None
  vision_meta: Any = None
  group_size: int = flax.struct.field(pytree_node=False, default=1)

  @property
  def group_ids(self) -> Any:
    """[N] group of each sample (= prompt_index), for `cosmojax.rl.compute_advantages`."""
    return self.prompt_index

  @property
  def prompt_length(self) -> int:
    """T_p: completions start at tokens[:, prompt_length]."""
    return self.tokens.shape[1] - self.logprobs.shape[1]

  @property
  def completion_tokens(self) -> Any:
    """[N, T_n] the completion part of `tokens`."""
    return self.tokens[:, self.prompt_length:]
