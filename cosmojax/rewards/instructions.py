"""Checkable instruction constraints (`Example.instructions`) and the instruction-following reward.

An instruction is "name" or "name:argument". Each name maps to a checker in
`INSTRUCTION_CHECKERS`, `checker(text, argument) -> bool`, where `argument` is the string
after the first colon or None. Checkers validate their argument and raise ValueError naming
the instruction when it is missing, superfluous or malformed. Add one with

    @INSTRUCTION_CHECKERS.register("no_digits")
    def _no_digits(text: str, arg: str | None) -> bool: ...

Supported names (text comparisons are case-insensitive; trailing whitespace and sentence
punctuation are ignored by start_with / end_with):

    uppercase          every cased letter is upper case (and there is one)
    lowercase          every cased letter is lower case (and there is one)
    one_word           exactly one word
    max_words:N        at most N words          min_words:N     at least N words
    max_sentences:N    at most N sentences
    max_chars:N        at most N characters (stripped)
    start_with:TEXT    begins with TEXT         end_with:TEXT   ends with TEXT
    contains:TEXT      contains TEXT            excludes:TEXT   does not contain TEXT
    no_commas          no comma (ASCII or full-width)
    number_only        the text is a single number
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

from cosmojax.registry import Registry
from cosmojax.rewards import matching
from cosmojax.rewards.accuracy import check_answer
from cosmojax.rewards.base import register_per_sample
from cosmojax.rewards.parsing import DEFAULT_TAGS, parse_response
from cosmojax.types import Example

InstructionChecker = Callable[[str, "str | None"], bool]

INSTRUCTION_CHECKERS = Registry[InstructionChecker]("instruction checker")

_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")
_EDGE_PUNCT = " \t\n.!?。！？\"'"


def parse_instruction(instruction: str) -> tuple[str, str | None]:
  """'max_words:5' -> ('max_words', '5'); 'uppercase' -> ('uppercase', None)."""
  name, sep, arg = instruction.strip().partition(":")
  return name.strip(), (arg.strip() if sep else None)


def check_instruction(text: str, instruction: str) -> bool:
  """Whether `text` satisfies `instruction` (KeyError for an unknown name)."""
  name, arg = parse_instruction(instruction)
  return bool(INSTRUCTION_CHECKERS.get(name)(text, arg))


def _no_arg(name: str, arg: str | None) -> None:
  if arg is not None:
    raise ValueError(f"instruction {name!r} takes no argument; got {name}:{arg}")


def _text_arg(name: str, arg: str | None) -> str:
  if not arg:
    raise ValueError(f"instruction {name!r} needs a text argument: '{name}:TEXT'")
  return matching.normalize_text(arg)


def _int_arg(name: str, arg: str | None) -> int:
  if arg is None or not arg.isdigit():
    raise ValueError(f"instruction {name!r} needs a non-negative integer argument: "
                     f"'{name}:N'; got {arg!r}")
  return int(arg)


def _words(text: str) -> list[str]:
  return _WORD.findall(text)


@INSTRUCTION_CHECKERS.register("uppercase")
def _uppercase(text: str, arg: str | None) -> bool:
  _no_arg("uppercase", arg)
  return any(c.isupper() for c in text) and not any(c.islower() for c in text)


@INSTRUCTION_CHECKERS.register("lowercase")
def _lowercase(text: str, arg: str | None) -> bool:
  _no_arg("lowercase", arg)
  return any(c.islower() for c in text) and not any(c.isupper() for c in text)


@INSTRUCTION_CHECKERS.register("one_word")
def _one_word(text: str, arg: str | None) -> bool:
  _no_arg("one_word", arg)
  return len(_words(text)) == 1


@INSTRUCTION_CHECKERS.register("max_words")
def _max_words(text: str, arg: str | None) -> bool:
  return len(_words(text)) <= _int_arg("max_words", arg)


@INSTRUCTION_CHECKERS.register("min_words")
def _min_words(text: str, arg: str | None) -> bool:
  return len(_words(text)) >= _int_arg("min_words", arg)


@INSTRUCTION_CHECKERS.register("max_sentences")
def _max_sentences(text: str, arg: str | None) -> bool:
  sentences = [s for s in re.split(r"[.!?。！？]+", text) if s.strip()]
  return len(sentences) <= _int_arg("max_sentences", arg)


@INSTRUCTION_CHECKERS.register("max_chars")
def _max_chars(text: str, arg: str | None) -> bool:
  return len(text.strip()) <= _int_arg("max_chars", arg)


@INSTRUCTION_CHECKERS.register("start_with")
def _start_with(text: str, arg: str | None) -> bool:
  return matching.normalize_text(text).lstrip(_EDGE_PUNCT).startswith(
      _text_arg("start_with", arg))


@INSTRUCTION_CHECKERS.register("end_with")
def _end_with(text: str, arg: str | None) -> bool:
  return matching.normalize_text(text).rstrip(_EDGE_PUNCT).endswith(
      _text_arg("end_with", arg).rstrip(_EDGE_PUNCT))


@INSTRUCTION_CHECKERS.register("contains")
def _contains(text: str, arg: str | None) -> bool:
  return _text_arg("contains", arg) in matching.normalize_text(text)


@INSTRUCTION_CHECKERS.register("excludes")
def _excludes(text: str, arg: str | None) -> bool:
  return _text_arg("excludes", arg) not in matching.normalize_text(text)


@INSTRUCTION_CHECKERS.register("no_commas")
def _no_commas(text: str, arg: str | None) -> bool:
  _no_arg("no_commas", arg)
  return "," not in text and "，" not in text


@INSTRUCTION_CHECKERS.register("number_only")
def _number_only(text: str, arg: str | None) -> bool:
  _no_arg("number_only", arg)
  return re.fullmatch(r"\s*[-+]?(?:\d+(?:[.,]\d+)*|\.\d+)\s*", text) is not None


@register_per_sample("instruction_following")
def instruction_following(completion: str, example: Example, *,
                          tags: Sequence[str] = DEFAULT_TAGS, aggregate: str = "mean",
                          require_answer: bool = True) -> float:
  """The fraction of `example.instructions` the answer satisfies (`aggregate="all"`: 1 only
  if all are); 0 without a readable answer; NaN for examples without instructions.

  With `require_answer` and a ground truth on the example, an answer that follows every
  format rule but says the wrong thing scores 0: following instructions means answering.
  """
  if not example.instructions:
    return math.nan
  if aggregate not in ("mean", "all"):
    raise ValueError(f"aggregate must be 'mean' or 'all'; got {aggregate!r}")
  answer = parse_response(completion, tags).final_answer
  if answer is None:
    return 0.0
  if require_answer and example.ground_truth is not None and not check_answer(answer, example):
    return 0.0
  passed = [check_instruction(answer, i) for i in example.instructions]
  return float(all(passed)) if aggregate == "all" else sum(passed) / len(passed)
