"""Perception terms: key-fact coverage (R_vkey, R_tkey), Visual-Focus, and consistency (R_cons).

Key facts are short strings attached to an example (`visual_key_facts`: what a correct
perception of the image contains; `textual_key_facts`: what the reasoning should use).
Coverage is the fraction of facts a field covers (`matching.coverage`: the fact's tokens in
order within a small window, number words and plurals folded).

VTPerception-R1 rewards coverage in three levels with thresholds tau_lo <= tau_hi:

    R_key = levels[0] if c < tau_lo;  levels[1] if tau_lo <= c < tau_hi;  levels[2] if c >= tau_hi

with c the covered fraction (defaults: levels 0 / 0.5 / 1, tau_lo 0.5, tau_hi 1.0: no credit
below half the facts, half credit from half, full credit for all of them). A field that
cannot be read (missing, repeated, nested) scores levels[0]; examples without facts score NaN.
"""

from __future__ import annotations

import math
from typing import Sequence

from cosmojax.rewards import matching
from cosmojax.rewards.accuracy import choice_index
from cosmojax.rewards.base import register_per_sample
from cosmojax.rewards.parsing import DEFAULT_TAGS, ParsedResponse, parse_response
from cosmojax.types import Example

DEFAULT_LEVELS = (0.0, 0.5, 1.0)


def coverage_level(fraction: float, tau_lo: float = 0.5, tau_hi: float = 1.0,
                   levels: Sequence[float] = DEFAULT_LEVELS) -> float:
  """The three-level reward of a covered fraction (see the module docstring)."""
  if not 0.0 <= tau_lo <= tau_hi <= 1.0 or len(levels) != 3:
    raise ValueError(f"need 0 <= tau_lo <= tau_hi <= 1 and three levels; got tau_lo={tau_lo}, "
                     f"tau_hi={tau_hi}, levels={tuple(levels)}")
  if math.isnan(fraction):
    return math.nan
  if fraction >= tau_hi:
    return float(levels[2])
  return float(levels[1] if fraction >= tau_lo else levels[0])


def _key_fact_reward(facts: Sequence[str], text: str | None, tau_lo: float, tau_hi: float,
                     levels: Sequence[float], slack: int) -> float:
  if not facts:
    return math.nan
  fraction = 0.0 if text is None else matching.coverage(facts, text, slack)
  return coverage_level(fraction, tau_lo, tau_hi, levels)


@register_per_sample("visual_key")
def visual_key(completion: str, example: Example, *, tags: Sequence[str] = DEFAULT_TAGS,
               field: str = "description", tau_lo: float = 0.5, tau_hi: float = 1.0,
               levels: Sequence[float] = DEFAULT_LEVELS, slack: int = 2) -> float:
  """R_vkey: coverage level of `example.visual_key_facts` in the description."""
  text = parse_response(completion, tags).field(field)
  return _key_fact_reward(example.visual_key_facts, text, tau_lo, tau_hi, levels, slack)


@register_per_sample("textual_key")
def textual_key(completion: str, example: Example, *, tags: Sequence[str] = DEFAULT_TAGS,
                field: str = "think", tau_lo: float = 0.5, tau_hi: float = 1.0,
                levels: Sequence[float] = DEFAULT_LEVELS, slack: int = 2) -> float:
  """R_tkey: coverage level of `example.textual_key_facts` in the reasoning."""
  text = parse_response(completion, tags).field(field)
  return _key_fact_reward(example.textual_key_facts, text, tau_lo, tau_hi, levels, slack)


def _reasoning_text(parsed: ParsedResponse) -> str:
  """Every readable field but the answer; the whole text of an untagged response."""
  if not parsed.has_tags:
    return parsed.text
  return "\n".join(parsed.fields[t] or "" for t in parsed.tags[:-1])


@register_per_sample("visual_focus")
def visual_focus(completion: str, example: Example, *, tags: Sequence[str] = DEFAULT_TAGS,
                 slack: int = 2) -> float:
  """CoSMo's Visual-Focus: the fraction of `example.visual_key_facts` the reasoning (every
  field before the answer) covers, in [0, 1]; NaN without facts.

  Continuous rather than levelled: it grounds the reasoning in the image whatever the answer.
  """
  if not example.visual_key_facts:
    return math.nan
  text = _reasoning_text(parse_response(completion, tags))
  return matching.coverage(example.visual_key_facts, text, slack)


def _support_text(parsed: ParsedResponse, example: Example, field: str) -> str | None:
  return example.prompt_text if field == "question" else parsed.field(field)


@register_per_sample("consistency")
def consistency(completion: str, example: Example, *, tags: Sequence[str] = DEFAULT_TAGS,
                support: Sequence[str] = ("description", "question")) -> float:
  """R_cons: 1 if every fact the answer uses is supported, 0 on any unsupported one.

  The answer's facts are its numbers (every answer type) and, for "choice" and "text"
  answers, its content words; a selected option ("B") stands for the option's text.
  Numbers must occur among the numbers of the `support` fields ("question" is the request's
  text; the other names are response fields), so that an answer of 4 after a description of
  3 circles is a contradiction and scores 0. Words must occur in the support fields other
  than the question (the question lists every option, so it would support any of them).
  A missing answer or support field scores 0; an answer with no checkable fact, NaN.
  """
  parsed = parse_response(completion, tags)
  answer = parsed.answer
  if answer is None:
    return 0.0
  fact_text = answer
  if example.answer_type == "choice" and example.choices:
    index = choice_index(answer, example.choices)
    fact_text = example.choices[index] if index is not None else answer
  fact_numbers = {matching.canonical_number(v) for v in matching.numbers(fact_text)}
  fact_words: set[str] = set()
  if example.answer_type in ("choice", "text"):
    fact_words = {t for t in matching.tokens(fact_text) if not t[0].isdigit()}
  if not fact_numbers and not fact_words:
    return math.nan
  texts = {field: _support_text(parsed, example, field) for field in support}
  if any(text is None for text in texts.values()):
    return 0.0
  support_numbers = {matching.canonical_number(v)
                     for text in texts.values() for v in matching.numbers(text)}
  support_words = {t for field, text in texts.items() if field != "question"
                   for t in matching.tokens(text)}
  return float(fact_numbers <= support_numbers and fact_words <= support_words)
