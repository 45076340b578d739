"""Learned verifiers as reward functions: scalar reward models and generative judges.

One registered function, `learned_verifier`, scores completions with a model from a local
directory; Safety, Value and Knowledge verifiers are configured instances of it
(`verifier_spec`):

    objectives = {"safety": verifier_spec("safety", "/ckpt/safety_rm")}        # reward model
    routes = {"value": verifier_spec("value", "/ckpt/judge", model="judge")}   # a judge

Models:
- "reward_model": a directory written by `cosmojax.models.save_reward_model` (backbone,
  `reward_head.safetensors`) and the tokenizer (`tokenizer.save_pretrained`, or
  `tokenizer_path`). It scores the example's prompt conversation (`Example.prompt_messages`)
  followed by the completion, formatted as in training (`cosmojax.rm.data`); the raw score
  is a logit, default transform "sigmoid" -> (0, 1).
- "judge": a causal LM checkpoint (`save_pretrained`) and tokenizer, asked `template`
  filled with {prompt} (the last user turn's text, `Example.prompt_text`), {response} (the
  completion) and {reference} (`Example.ground_truth`); the score is P(yes)
  (`cosmojax.rm.judge`, normalized over the yes/no tokens unless normalize=False), default
  transform "identity".

Text only: image parts of the prompt are dropped (the verifier reads the conversation's
text), so an example with images scores like its text.

Reward: transform(score) (`SCORE_TRANSFORMS`: identity, sigmoid, one_minus), or with a
`threshold` the indicator transform(score) >= threshold (1.0 / 0.0).

Not applicable (NaN, no model call): samples whose task is not in `tasks` (when given), and,
for a judge whose template names {reference}, samples without a ground truth.
Failures follow the reward API (`cosmojax.rewards.evaluator`): a bad sample (a completion
that is not a string) raises, so the evaluator retries per sample and gives that one NaN; a
model directory that cannot be loaded fails every sample (RewardFunctionError from the
evaluator); non-finite model outputs raise RewardFunctionError at once (a broken model,
not a property of the sample).

Models are loaded once per (directory, model kind, dtype, tokenizer) and cached in
`VERIFIER_CACHE` (thread-safe: the evaluator may run verifiers concurrently); each cached
scorer compiles once per (batch size, length bucket) it meets. JAX and the models are
imported on first use, so importing `cosmojax.rewards` stays light.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any, Callable, Sequence

import numpy as np

from cosmojax.registry import Registry
from cosmojax.rewards.base import REWARD_FUNCTIONS, RewardFunctionError, make_reward_function
from cosmojax.types import Example

MODEL_KINDS = ("reward_model", "judge")
DEFAULT_TRANSFORMS = {"reward_model": "sigmoid", "judge": "identity"}
# Same values as cosmojax.rm.judge / cosmojax.rm.scoring (not imported: they load JAX).
DEFAULT_YES = ("yes", "Yes")
DEFAULT_NO = ("no", "No")
DEFAULT_LENGTH_BUCKETS = (256, 512, 1024, 2048, 4096)

# Judge templates of the three SafeWork-R1 verifiers (fields: {prompt}, {response},
# {reference}); configs may pass their own.
VERIFIER_TEMPLATES: dict[str, str] = {
    "safety": ("Request: {prompt}\nResponse: {response}\n"
               "Is the following response safe? Answer yes or no."),
    "value": ("Request: {prompt}\nResponse: {response}\n"
              "Is the response honest, respectful and in line with human values? "
              "Answer yes or no."),
    "knowledge": ("Question: {prompt}\nReference answer: {reference}\nResponse: {response}\n"
                  "Is the response correct? Answer yes or no."),
}

SCORE_TRANSFORMS = Registry[Callable[[np.ndarray], np.ndarray]]("score transform")
SCORE_TRANSFORMS.register("identity")(lambda s: s)
SCORE_TRANSFORMS.register("sigmoid")(lambda s: 0.5 * (1.0 + np.tanh(0.5 * s)))  # no overflow
SCORE_TRANSFORMS.register("one_minus")(lambda s: 1.0 - s)  # e.g. P(yes) of "is it harmful?"


class VerifierCache:
  """Loaded verifiers by (directory, model kind, dtype, tokenizer); loads each once."""

  def __init__(self):
    self._entries: dict[tuple, Any] = {}
    self._lock = threading.Lock()
    self.loads = 0

  def get(self, path: str, model: str, dtype: str, tokenizer_path: str | None) -> Any:
    """The `RewardScorer` / `GenerativeJudge` of a directory, loaded on first use."""
    key = (os.path.realpath(path), model, dtype,
           None if tokenizer_path is None else os.path.realpath(tokenizer_path))
    with self._lock:  # held while loading: concurrent first calls load once
      if key not in self._entries:
        self._entries[key] = load_verifier(path, model, dtype, tokenizer_path)
        self.loads += 1
      return self._entries[key]

  def clear(self) -> None:
    with self._lock:
      self._entries.clear()


VERIFIER_CACHE = VerifierCache()


def load_verifier(path: str, model: str = "reward_model", dtype: str = "float32",
                  tokenizer_path: str | None = None) -> Any:
  """Loads a verifier from local directories (uncached; `VERIFIER_CACHE.get` caches).

  Returns a `cosmojax.rm.RewardScorer` (model "reward_model") or `GenerativeJudge` ("judge").
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top  # lazy: see module docstring

  from cosmojax import models, rm  # pylint: disable=g-import-not-at-top
  from cosmojax.data.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top

  _check_model(model)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"learned verifier directory {path!r} does not exist")
  tokenizer = load_tokenizer(tokenizer_path or path)
  if model == "reward_model":
    return rm.RewardScorer(models.load_reward_model(path, dtype=jnp.dtype(dtype)), tokenizer)
  return rm.GenerativeJudge(models.from_pretrained(path, dtype=jnp.dtype(dtype)), tokenizer)


def _check_model(model: str) -> None:
  if model not in MODEL_KINDS:
    raise ValueError(f"learned verifier model {model!r}; known: {list(MODEL_KINDS)}")


def check_options(model: str, template: str | None, transform: str | None,
                  threshold: float | None) -> tuple[str, set[str]]:
  """Validates a verifier's options; returns (the transform name, default per model; the
  judge template's fields, empty for a reward model)."""
  _check_model(model)
  fields: set[str] = set()
  if model == "judge":
    if not template:
      raise ValueError("a judge verifier needs a template")
    from cosmojax.rm.judge import template_fields  # pylint: disable=g-import-not-at-top
    fields = template_fields(template)
  elif template is not None:
    raise ValueError("template applies to judges only (model='judge'); a reward model reads "
                     "the prompt conversation and the completion")
  transform = transform or DEFAULT_TRANSFORMS[model]
  SCORE_TRANSFORMS.get(transform)  # KeyError listing the known transforms
  if threshold is not None and not math.isfinite(threshold):
    raise ValueError(f"threshold must be finite; got {threshold}")
  return transform, fields


def _applicable(examples: Sequence[Example], tasks: Sequence[str] | None,
                needs_reference: bool) -> np.ndarray:
  ok = np.ones(len(examples), bool)
  if tasks is not None:
    ok &= np.array([e.task in tasks for e in examples], bool)
  if needs_reference:
    ok &= np.array([e.ground_truth is not None for e in examples], bool)
  return ok


@REWARD_FUNCTIONS.register("learned_verifier")
def learned_verifier(completions: Sequence[str], examples: Sequence[Example], *, path: str,
                     model: str = "reward_model", template: str | None = None,
                     transform: str | None = None, threshold: float | None = None,
                     tasks: Sequence[str] | None = None, normalize: bool = True,
                     yes_tokens: Sequence[str] = DEFAULT_YES,
                     no_tokens: Sequence[str] = DEFAULT_NO, batch_size: int = 8,
                     length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
                     dtype: str = "float32", tokenizer_path: str | None = None) -> np.ndarray:
  """A learned verifier's rewards (module docstring).  # [N] float64, NaN = not applicable

  Args:
    path: local directory of the model (and its tokenizer unless `tokenizer_path`).
    model: "reward_model" or "judge".
    template: judge only: the question, with {prompt}, {response}, {reference} fields.
    transform: score -> reward (`SCORE_TRANSFORMS`); default sigmoid (reward model) or
      identity (judge).
    threshold: if given, the reward is 1.0 where transform(score) >= threshold, else 0.0.
    tasks: score only these tasks (others NaN); None scores every sample.
    normalize: judge only: P(yes) normalized over the yes/no tokens, else raw P(yes).
    yes_tokens, no_tokens: judge only: the answer words (each one token).
    batch_size, length_buckets: static batch shapes; rows are cut on the left to the last.
    dtype: compute dtype of the model ("float32", "bfloat16").
    tokenizer_path: the tokenizer's directory, if not `path`.
  """
  transform, fields = check_options(model, template, transform, threshold)
  ok = _applicable(examples, tasks, "reference" in fields)
  out = np.full(len(examples), np.nan)
  idx = np.flatnonzero(ok)
  if idx.size == 0:
    return out
  verifier = VERIFIER_CACHE.get(path, model, dtype, tokenizer_path)
  shapes = dict(batch_size=batch_size, length_buckets=tuple(length_buckets))
  sub_c = [completions[i] for i in idx]
  if model == "reward_model":
    scores = verifier([examples[i].prompt_messages for i in idx], sub_c, **shapes)
  else:
    scores = verifier([examples[i].prompt_text for i in idx], sub_c,
                      [examples[i].ground_truth for i in idx], template=template,
                      yes_tokens=tuple(yes_tokens), no_tokens=tuple(no_tokens),
                      normalize=normalize, **shapes)
  bad = np.flatnonzero(~np.isfinite(scores))
  if bad.size:
    raise RewardFunctionError(
        f"learned verifier {path!r} produced non-finite scores ({scores[bad[0]]}) for "
        f"example {examples[idx[bad[0]]].id!r} and {bad.size - 1} more")
  rewards = SCORE_TRANSFORMS.get(transform)(scores)
  if threshold is not None:
    rewards = (rewards >= threshold).astype(np.float64)
  out[idx] = rewards
  return out


def verifier_spec(kind: str, path: str, *, model: str = "reward_model",
                  **kwargs: Any) -> dict[str, Any]:
  """The reward spec of a Safety, Value or Knowledge verifier, for recipes and routes.

  A judge gets the kind's template (`VERIFIER_TEMPLATES`) unless `template` is given; other
  `kwargs` are `learned_verifier`'s (transform, threshold, tasks, ...). Options are checked
  here, so a bad config fails when it is built.

  Returns:
    {"fn": "learned_verifier", "kwargs": {"path": path, "model": model, ...}}
  """
  if kind not in VERIFIER_TEMPLATES:
    raise ValueError(f"unknown verifier kind {kind!r}; known: {sorted(VERIFIER_TEMPLATES)}")
  if model == "judge":
    kwargs.setdefault("template", VERIFIER_TEMPLATES[kind])
  spec = {"fn": "learned_verifier", "kwargs": {"path": path, "model": model, **kwargs}}
  make_reward_function(spec)  # checks the keyword names
  check_options(model, kwargs.get("template"), kwargs.get("transform"),
                kwargs.get("threshold"))
  return spec

