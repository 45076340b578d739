"""Answer checking: VTPerception's R_acc, the Knowledge verifier, and the Value verifier.

How an answer is checked depends on `Example.answer_type`:

- "choice": the answer must select exactly one option, by letter ("B", "(B)", "B.",
  "B. blue", "The answer is B", "\\boxed{B}") or by the option's text ("blue"); the
  reference is a letter or an option text. An answer naming two letters selects none.
- "number": the answer must contain exactly one distinct number (digits first; English number
  words when there are no digits; fractions and percents allowed), within
  max(abs_tol, rel_tol * |reference|) of the reference. "3 or 4" is a hedge and scores 0.
- "math": `math_verify.parse` / `verify` (symbolic equivalence: "1/2" == "0.5" ==
  "\\frac{1}{2}"; answers without "$" or "\\boxed" are read as LaTeX math first). Note
  that math-verify extracts the first answer it finds, so it accepts some hedges
  ("1/2 or 1/3"). math-verify enforces its timeouts with signal.alarm, which only works on
  the main thread; on other threads (the evaluator's pool) its timeouts are disabled and
  answers longer than `max_math_chars` are rejected instead, so that no pathological
  expression can hang a worker.
- "text": equality after normalization (case, punctuation, articles, whitespace);
  `text_match="contains"` accepts the reference as a whole-word phrase inside the answer.

The answer is the parsed answer field (`ParsedResponse.final_answer`): a malformed response
with no unambiguous answer scores 0. Examples without a reference score NaN.
"""

from __future__ import annotations

import logging
import math
import re
import string
import threading
from typing import Sequence

import math_verify

from cosmojax.rewards import matching
from cosmojax.rewards.base import register_per_sample
from cosmojax.rewards.parsing import DEFAULT_TAGS, parse_response
from cosmojax.types import Example

ANSWER_TYPES = ("choice", "number", "math", "text", "word")

_LETTERS = string.ascii_uppercase
_BOXED = re.compile(r"\\boxed\s*\{([^{}]*)\}")
_LETTER_ONLY = re.compile(r"^\(?([A-Za-z])\)?[.:)]?$")
_LETTER_LEAD = re.compile(r"^\(?([A-Z])(?:\)|[.:)]\s)\s*\S")
_LETTER_PHRASE = re.compile(
    r"^(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)\s*(?:is|:)?\s*"
    r"\(?((?-i:[A-Z]))\)?[.:)]?(?:\s|$)",
    re.IGNORECASE)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_MATH_SIGNAL_TIMEOUT_S = 5


class _DropTimeoutDisabledWarning(logging.Filter):
  """math-verify warns on every call made with its timeouts disabled; we disable them on
  purpose off the main thread (see the module docstring)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
  logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


def normalize_answer_text(text: str) -> str:
  """Lower case, no punctuation, no articles, single spaces."""
  text = matching.normalize_text(text)
  text = "".join(" " if _is_punct(ch) else ch for ch in text)
  return " ".join(_ARTICLES.sub(" ", text).split())


def _is_punct(ch: str) -> bool:
  return not ch.isalnum() and not ch.isspace()


def choice_index(answer: str, choices: Sequence[str]) -> int | None:
  """The option an answer selects (see the module docstring), or None."""
  n = len(choices) or len(_LETTERS)
  text = _BOXED.sub(r"\1", answer).strip().strip("*").strip()
  for pattern in (_LETTER_ONLY, _LETTER_PHRASE, _LETTER_LEAD):
    m = pattern.match(text)
    if m:
      index = _LETTERS.index(m.group(1).upper())
      return index if index < n else None
  normalized = normalize_answer_text(text)
  hits = [i for i, c in enumerate(choices) if normalize_answer_text(c) == normalized]
  return hits[0] if len(hits) == 1 else None


def single_number(text: str) -> float | None:
  """The one distinct number `text` states (digits first, else number words), or None."""
  values = matching.numbers(text, include_words=False) or matching.numbers(text)
  distinct = set(values)
  return values[0] if len(distinct) == 1 else None


def _parse_math(text: str, timeout: int | None) -> list:
  """math-verify's parse; bare text is read as LaTeX math first ("x^2 + 2x + 1" would
  otherwise be read as its last number), then as plain text."""
  if "$" in text or "\\boxed" in text:
    return math_verify.parse(text, parsing_timeout=timeout)
  return (math_verify.parse(f"${text}$", parsing_timeout=timeout)
          or math_verify.parse(text, parsing_timeout=timeout))


def math_equal(answer: str, reference: str, max_math_chars: int = 512) -> bool:
  """Symbolic equivalence through math-verify (thread-safe, see the module docstring)."""
  on_main = threading.current_thread() is threading.main_thread()
  if not on_main and len(answer) > max_math_chars:
    return False
  timeout = _MATH_SIGNAL_TIMEOUT_S if on_main else None
  gold = _parse_math(reference, timeout)
  pred = _parse_math(answer, timeout)
  if not gold or not pred:
    return False
  return bool(math_verify.verify(gold, pred, timeout_seconds=timeout))


def check_answer(answer: str, example: Example, *, rel_tol: float = 1e-4,
                 abs_tol: float = 1e-9, text_match: str = "exact",
                 max_math_chars: int = 512) -> bool:
  """Whether `answer` matches `example.ground_truth` under `example.answer_type`."""
  reference = example.ground_truth
  if reference is None:
    raise ValueError(f"example {example.id!r} has no ground_truth to check against")
  kind = example.answer_type
  if kind == "choice":
    gold = choice_index(reference, example.choices)
    if gold is None:
      raise ValueError(f"example {example.id!r}: ground_truth {reference!r} selects none of "
                       f"the choices {example.choices}")
    return choice_index(answer, example.choices) == gold
  if kind == "number":
    gold = single_number(reference)
    if gold is None:
      raise ValueError(f"example {example.id!r}: ground_truth {reference!r} is not one number")
    pred = single_number(answer)
    return pred is not None and matching.numbers_close(pred, gold, rel_tol, abs_tol)
  if kind == "math":
    return math_equal(answer, reference, max_math_chars)
  if kind == "word":  # the reference appears as a whole word (or phrase), ignoring case
    pred, gold = normalize_answer_text(answer), normalize_answer_text(reference)
    return bool(gold) and f" {gold} " in f" {pred} "
  if kind == "text":
    pred, gold = normalize_answer_text(answer), normalize_answer_text(reference)
    if text_match == "exact":
      return pred == gold
    if text_match == "contains":
      return bool(gold) and f" {gold} " in f" {pred} "
    raise ValueError(f"text_match must be 'exact' or 'contains'; got {text_match!r}")
  raise ValueError(f"example {example.id!r}: answer_type {kind!r} is not one of {ANSWER_TYPES}")


@register_per_sample("accuracy")
def accuracy(completion: str, example: Example, *, tags: Sequence[str] = DEFAULT_TAGS,
             rel_tol: float = 1e-4, abs_tol: float = 1e-9, text_match: str = "exact",
             max_math_chars: int = 512) -> float:
  """R_acc / the Knowledge verifier: 1 if the answer matches the reference, else 0; NaN
  without a reference."""
  if example.ground_truth is None:
    return math.nan
  answer = parse_response(completion, tags).final_answer
  if answer is None:
    return 0.0
  return float(check_answer(answer, example, rel_tol=rel_tol, abs_tol=abs_tol,
                            text_match=text_match, max_math_chars=max_math_chars))


@register_per_sample("value")
def value(completion: str, example: Example, *, tags: Sequence[str] = DEFAULT_TAGS) -> float:
  """The Value verifier: 1 if the answer selects `example.preferred`, else 0; NaN without one.

  With choices, both are mapped to an option (letters or option texts); without choices, the
  normalized texts must be equal.
  """
  if example.preferred is None:
    return math.nan
  answer = parse_response(completion, tags).final_answer
  if answer is None:
    return 0.0
  if example.choices:
    preferred = choice_index(example.preferred, example.choices)
    if preferred is None:
      raise ValueError(f"example {example.id!r}: preferred {example.preferred!r} selects none "
                       f"of the choices {example.choices}")
    return float(choice_index(answer, example.choices) == preferred)
  return float(normalize_answer_text(answer) == normalize_answer_text(example.preferred))
