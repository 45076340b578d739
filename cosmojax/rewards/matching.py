"""Text matching shared by the rule-based rewards: normalization, numbers and key facts.

Tokens are what facts and texts are compared on: lower-cased words with a crude plural
folding ("circles" -> "circle", "boxes" -> "box"), English number words mapped to digits
("three" -> "3"), numbers in canonical form ("3.0" -> "3", "1,000" -> "1000"), and a few
function words dropped. A key fact is covered by a text when the fact's tokens occur in the
text in the same order within a window of `len(fact) + slack` tokens, so that
"3 red circles" is covered by "three small red circles" but "red left of blue" is not
covered by "blue left of red".
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from typing import Sequence

NUMBER_WORDS = {
    w: i for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split())
}
NUMBER_WORDS.update(thirty=30, forty=40, fifty=50, sixty=60, seventy=70, eighty=80, ninety=90,
                    hundred=100)

STOP_WORDS = frozenset(
    "a an the of is are was were be there here in on at to and with it its this that".split())

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+")
# A signed decimal, optionally a fraction "a/b", optionally a percent sign.
_NUMBER = re.compile(
    r"(?<![\w.])(-)?(\d+(?:\.\d+)?|\.\d+)(?:\s*/\s*(\d+(?:\.\d+)?))?\s*%?")
_NUMBER_WORD = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b")


def normalize_text(text: str) -> str:
  """NFKC, lower case, straight quotes, thousands separators removed, single spaces."""
  text = unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()
  return " ".join(_THOUSANDS.sub("", text).split())


def canonical_number(value: float) -> str:
  """'3' for 3.0, '0.5' for 0.5: the form numbers take as tokens."""
  if math.isfinite(value) and value == int(value):
    return str(int(value))
  return f"{value:.6g}"


def _fold(word: str) -> str:
  if word in NUMBER_WORDS:
    return str(NUMBER_WORDS[word])
  if len(word) <= 3 or not word.endswith("s") or word.endswith("ss"):
    return word
  if word.endswith("ies"):
    return word[:-3] + "y"
  if word.endswith(("ches", "shes", "xes", "zes", "sses")):
    return word[:-2]
  return word[:-1]


def tokens(text: str) -> list[str]:
  """The comparison tokens of `text` (see the module docstring)."""
  out = []
  for tok in _TOKEN.findall(normalize_text(text)):
    if tok[0].isdigit():
      out.append(canonical_number(float(tok)))
    elif tok not in STOP_WORDS:
      out.append(_fold(tok))
  return out


def numbers(text: str, include_words: bool = True) -> list[float]:
  """Every number in `text`, in order: decimals, fractions ("1/2" -> 0.5), percents
  ("50%" -> 50) and, with `include_words`, English number words ("three" -> 3)."""
  text = normalize_text(text)
  found: list[tuple[int, float]] = []
  for m in _NUMBER.finditer(text):
    value = float(m.group(2))
    if m.group(3) is not None:
      denominator = float(m.group(3))
      if denominator == 0:
        continue
      value /= denominator
    found.append((m.start(), -value if m.group(1) else value))
  if include_words:
    found.extend((m.start(), float(NUMBER_WORDS[m.group(1)]))
                 for m in _NUMBER_WORD.finditer(text))
  return [v for _, v in sorted(found)]


def numbers_close(a: float, b: float, rel_tol: float, abs_tol: float) -> bool:
  """|a - b| <= max(abs_tol, rel_tol * |b|), with b the reference."""
  return abs(a - b) <= max(abs_tol, rel_tol * abs(b))


def fact_covered(fact: Sequence[str], text: Sequence[str], slack: int = 2) -> bool:
  """Whether the token sequence `fact` occurs in order in `text` within len(fact) + slack."""
  if not fact:
    return False
  window = len(fact) + slack
  for start, tok in enumerate(text):
    if tok != fact[0]:
      continue
    j = 1
    for t in text[start + 1:start + window]:
      if j < len(fact) and t == fact[j]:
        j += 1
    if j == len(fact):
      return True
  return False


@functools.lru_cache(maxsize=4096)
def _fact_tokens(fact: str) -> tuple[str, ...]:
  return tuple(tokens(fact))


def coverage(facts: Sequence[str], text: str, slack: int = 2) -> float:
  """The fraction of `facts` covered by `text` (NaN when there are no facts)."""
  if not facts:
    return math.nan
  text_tokens = tokens(text)
  return sum(fact_covered(_fact_tokens(f), text_tokens, slack) for f in facts) / len(facts)


def word_count(text: str) -> float:
  """Words of `text`: runs of letters/digits, CJK characters counting half a word each."""
  cjk = len(re.findall(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]", text))
  latin = len(re.findall(r"[^\W_\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]+", text))
  return latin + 0.5 * cjk
