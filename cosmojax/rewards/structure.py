"""Terms on the form of a response: format (R_fmt, CoSMo's Format) and repetition (R_rep)."""

from __future__ import annotations

import re
from typing import Sequence

from cosmojax.rewards import matching
from cosmojax.rewards.base import register_per_sample
from cosmojax.rewards.parsing import DEFAULT_TAGS, parse_response
from cosmojax.types import Example


@register_per_sample("format")
def format_reward(completion: str, example: Example, *, tags: Sequence[str] = DEFAULT_TAGS,
                  partial_credit: float = 0.0) -> float:
  """1 if the response has exactly the structure `tags` describe (see `parse_response`).

  Otherwise `partial_credit` times the fraction of fields that could still be read
  unambiguously (0 by default: the format term is all or nothing).
  """
  del example  # the format does not depend on the example
  parsed = parse_response(completion, tags)
  if parsed.ok:
    return 1.0
  readable = sum(v is not None for v in parsed.fields.values())
  return partial_credit * readable / len(parsed.tags)


def repeated_ngram_fraction(text: str, n: int) -> float:
  """1 - (#distinct word n-grams) / (#n-grams); 0 for texts shorter than n words."""
  words = re.findall(r"[^\W_]+", matching.normalize_text(text))
  grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
  if not grams:
    return 0.0
  return 1.0 - len(set(grams)) / len(grams)


@register_per_sample("repetition")
def repetition_penalty(completion: str, example: Example, *, ngram: int = 3,
                       max_penalty: float = 1.0) -> float:
  """R_rep = -max_penalty * (1 - distinct n-grams / n-grams) over the whole completion.

  0 for a text with no repeated word n-gram, -max_penalty in the limit of one n-gram
  repeated throughout. Applies to every sample.
  """
  del example
  if ngram < 1 or max_penalty < 0:
    raise ValueError(f"repetition: ngram must be >= 1 and max_penalty >= 0; got {ngram}, "
                     f"{max_penalty}")
  fraction = repeated_ngram_fraction(completion, ngram)
  return -max_penalty * fraction if fraction else 0.0
