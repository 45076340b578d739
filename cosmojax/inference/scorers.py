"""Step scorers: verifiers of partial responses, and their registry.

A step scorer is any callable

    scorer(examples: Sequence[Example], partial_texts: Sequence[str]) -> [N] floats

that scores each partial response (the response text up to and including the latest step)
to its example's prompt; higher is better. Value-guided intervention compares the score with
a threshold, search ranks candidates by it. Built-in scorers (`STEP_SCORERS`, by name):

  value_model   a `ValueModel`: V(prompt, partial) = the value head at the partial
                response's last token, the response left open (no closing `<|im_end|>`)
  reward_model  a `RewardModel` scoring the partial response as if it were complete (the
                format it was trained on: response + `<|im_end|>`, `cosmojax.rm.data`)
  judge         a `GenerativeJudge`: P(yes) of a judge template filled with the request
                (`Example.prompt_text`), the partial response and the reference answer
  reward_fn     a reward function of `cosmojax.rewards` (a spec: name or {"fn", "kwargs"});
                NaN ("not applicable") reads as `not_applicable`

Model scorers read text only (image parts of the prompt are dropped, as in `cosmojax.rm`),
tokenize with their own tokenizer (it may differ from the policy's), and run in jitted
batches of static shapes (`batch_size` rows, length buckets). A model argument may be a
local checkpoint directory instead of a model (loaded with its tokenizer).

`make_step_scorer(spec)` builds one from a callable, a registry name, or
{"scorer": name, "kwargs": {...}}; `score_partials` calls a scorer and checks its output.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence, Union

import numpy as np

from cosmojax.data.batching import BatchSpec
from cosmojax.data.tokenizer import load_tokenizer
from cosmojax.models.checkpoint import from_pretrained
from cosmojax.models.heads import RewardModel, ValueModel, load_reward_model
from cosmojax.registry import Registry
from cosmojax.rewards.base import RewardSpec, make_reward_function
from cosmojax.rm import data as rm_data
from cosmojax.rm.judge import DEFAULT_TEMPLATE, GenerativeJudge, template_fields
from cosmojax.rm.scoring import DEFAULT_LENGTH_BUCKETS, RewardScorer
from cosmojax.types import Example


class StepScorer(Protocol):
  """Scores partial responses: [N] floats, higher is better."""

  def __call__(self, examples: Sequence[Example], partial_texts: Sequence[str]) -> Any:
    ...


STEP_SCORERS = Registry[Callable[..., StepScorer]]("step scorer")

# A scorer as configs name it: a callable, a registry name, or {"scorer": name, "kwargs": {}}.
ScorerSpec = Union[StepScorer, str, Mapping[str, Any]]


def _model_and_tokenizer(model: Any, tokenizer: Any, load: Callable[[str], Any]):
  if isinstance(model, str):
    return load(model), tokenizer if tokenizer is not None else load_tokenizer(model)
  if tokenizer is None:
    raise ValueError("a scorer given a model (not a checkpoint directory) needs its tokenizer")
  return model, tokenizer


@STEP_SCORERS.register("value_model")
class ValueModelScorer:
  """V(prompt, partial response) of a `ValueModel` at the response's last token.

  Args:
    model: a `ValueModel` or the directory of one (`save_reward_model`).
    tokenizer: its tokenizer (default: loaded from the directory).
    batch_size: rows per jitted batch.
    length_buckets: padded row lengths; rows longer than the largest are cut on the left.
  """

  def __init__(self, model: ValueModel | str, tokenizer: Any = None, *, batch_size: int = 8,
               length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS):
    model, tokenizer = _model_and_tokenizer(model, tokenizer, load_reward_model)
    if not isinstance(model, ValueModel):
      raise TypeError(f"value_model scorer needs a ValueModel; got {type(model).__name__} "
                      "(use the reward_model scorer for a RewardModel)")
    self.scorer = RewardScorer(model, tokenizer)
    self.spec = BatchSpec(batch_size, tuple(length_buckets))
    self.encoder = rm_data.SequenceEncoder(tokenizer, self.spec.max_length)

  def rows(self, examples: Sequence[Example], partial_texts: Sequence[str]) -> list[np.ndarray]:
    """Token rows: the prompt with the generation prompt, then the partial response."""
    prompts = self.encoder.prompts([e.prompt_messages for e in examples])
    tokenizer = self.encoder.tokenizer
    out = []
    for prompt, text in zip(prompts, partial_texts):
      response = np.asarray(tokenizer.encode(text, add_special_tokens=False), np.int32)
      out.append(np.concatenate([prompt, response])[-self.spec.max_length:])
    return out

  def __call__(self, examples: Sequence[Example], partial_texts: Sequence[str]) -> np.ndarray:
    return self.scorer.score_rows(self.rows(examples, partial_texts), self.spec,
                                  self.encoder.pad_id)


@STEP_SCORERS.register("reward_model")
class RewardModelScorer:
  """The reward of each partial response as a complete one (`cosmojax.rm.RewardScorer`).

  Args:
    model: a `RewardModel` (a `ValueModel` too) or the directory of one.
    tokenizer: its tokenizer (default: loaded from the directory).
    batch_size, length_buckets: as `RewardScorer.__call__`.
  """

  def __init__(self, model: RewardModel | str, tokenizer: Any = None, *, batch_size: int = 8,
               length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS):
    model, tokenizer = _model_and_tokenizer(model, tokenizer, load_reward_model)
    self.scorer = RewardScorer(model, tokenizer)
    self.kwargs = dict(batch_size=batch_size, length_buckets=tuple(length_buckets))

  def __call__(self, examples: Sequence[Example], partial_texts: Sequence[str]) -> np.ndarray:
    return self.scorer([e.prompt_messages for e in examples], list(partial_texts),
                       **self.kwargs)


@STEP_SCORERS.register("judge")
class JudgeScorer:
  """P(yes) of a generative judge asked `template` about each partial response.

  Args:
    model: a `GenerativeJudge`, a causal LM (`CausalLM`), or the directory of one.
    tokenizer: its tokenizer (not needed for a `GenerativeJudge`; default: from the
      directory).
    template: the judge's question, with {prompt}, {response} and optionally {reference}
      (the example's ground truth, which every example must then have).
    judge_kwargs: options of `GenerativeJudge.p_yes_prompts` (yes/no tokens, normalize,
      batch_size, length_buckets).
  """

  def __init__(self, model: Any, tokenizer: Any = None, *, template: str = DEFAULT_TEMPLATE,
               **judge_kwargs: Any):
    if not isinstance(model, GenerativeJudge):
      model = GenerativeJudge(*_model_and_tokenizer(model, tokenizer, from_pretrained))
    self.judge = model
    self.template = template
    self.uses_reference = "reference" in template_fields(template)
    self.judge_kwargs = judge_kwargs

  def __call__(self, examples: Sequence[Example], partial_texts: Sequence[str]) -> np.ndarray:
    references = [e.ground_truth for e in examples] if self.uses_reference else None
    return self.judge([e.prompt_text for e in examples], list(partial_texts), references,
                      template=self.template, **self.judge_kwargs)


@STEP_SCORERS.register("reward_fn")
class RewardFunctionScorer:
  """A `cosmojax.rewards` reward function as a step scorer.

  Args:
    spec: the reward function: a registry name or {"fn": name, "kwargs": {...}}.
    not_applicable: the score of a partial response the function returns NaN for.
  """

  def __init__(self, spec: RewardSpec, *, not_applicable: float = 0.0):
    self.fn = make_reward_function(spec)
    self.not_applicable = float(not_applicable)

  def __call__(self, examples: Sequence[Example], partial_texts: Sequence[str]) -> np.ndarray:
    values = self.fn(list(partial_texts), list(examples))
    return np.where(np.isnan(values), self.not_applicable, values)


def make_step_scorer(spec: ScorerSpec) -> StepScorer:
  """A step scorer from a callable (returned as is), a registry name (built without
  arguments), or {"scorer": name, "kwargs": {...}}."""
  if isinstance(spec, str):
    return STEP_SCORERS.get(spec)()
  if isinstance(spec, Mapping):
    unknown = set(spec) - {"scorer", "kwargs"}
    if "scorer" not in spec or unknown:
      raise ValueError(f"step scorer spec {dict(spec)!r}: expected keys 'scorer' and optional "
                       "'kwargs'")
    return STEP_SCORERS.get(spec["scorer"])(**dict(spec.get("kwargs") or {}))
  if callable(spec):
    return spec
  raise TypeError(f"step scorer must be a callable, a name or a mapping; got "
                  f"{type(spec).__name__}")


def score_partials(scorer: StepScorer, examples: Sequence[Example],
                   partial_texts: Sequence[str]) -> np.ndarray:
  """`scorer` on the rows, checked: [N] finite float64 (ValueError naming a bad row)."""
  if len(examples) != len(partial_texts):
    raise ValueError(f"{len(examples)} examples but {len(partial_texts)} partial responses")
  if not examples:
    return np.zeros(0, np.float64)
  name = getattr(scorer, "__name__", type(scorer).__name__)
  values = np.asarray(scorer(list(examples), list(partial_texts)), np.float64)
  if values.shape != (len(examples),):
    raise ValueError(f"step scorer {name} returned shape {values.shape}; expected "
                     f"({len(examples)},)")
  bad = np.flatnonzero(~np.isfinite(values))
  if bad.size:
    i = int(bad[0])
    raise ValueError(f"step scorer {name} returned {values[i]} for row {i} (example "
                     f"{examples[i].id!r}); step scores must be finite")
  return values
