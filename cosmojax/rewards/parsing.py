"""Parsing of structured responses.

The default structure is VTPerception-R1's
`<description>…</description><think>…</think><answer>…</answer>`.

The parser is tolerant of whitespace (around fields, inside the angle brackets: `< answer >`,
`</ answer>`) and of letter case in tag names, and strict about everything else: each tag
opens and closes exactly once, the fields come in the configured order, no field is nested
in another, no field is empty, and nothing but whitespace lies outside the fields.

A field is only exposed when it is unambiguous (its tag opens once, closes once, after the
opening, and no other tag lies inside it); otherwise it is None and `problems` says why.
An answer written inside the description therefore yields neither a description nor an
answer. The last configured tag holds the answer.

Responses without any of the configured tags are plain-text answers: `final_answer` is then
the whole stripped text, so that tasks that do not ask for the format can still be scored;
the format reward is what penalizes a missing structure.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Mapping, Sequence

# VTPerception-R1's response format; CoSMo-RL style recipes use ("think", "answer").
DEFAULT_TAGS = ("description", "think", "answer")

# How much of a stray text is quoted in a problem message.
_QUOTE_CHARS = 40


@dataclasses.dataclass(frozen=True)
class ParsedResponse:
  """The fields of a structured response and what is wrong with it.

  Attributes:
    text: the raw response.
    tags: the expected tags, in order; the last one holds the answer.
    fields: tag -> stripped content, or None where the field is missing or ambiguous.
    problems: human-readable descriptions of every violation found (empty when well formed).
    has_tags: whether any configured tag occurs in the text at all.
  """

  text: str
  tags: tuple[str, ...]
  fields: Mapping[str, str | None]
  problems: tuple[str, ...]
  has_tags: bool

  @property
  def ok(self) -> bool:
    """Whether the response has exactly the expected structure."""
    return not self.problems

  def field(self, tag: str) -> str | None:
    if tag not in self.fields:
      raise KeyError(f"tag {tag!r} is not one of the parsed tags {self.tags}")
    return self.fields[tag]

  @property
  def description(self) -> str | None:
    return self.fields.get("description")

  @property
  def think(self) -> str | None:
    return self.fields.get("think")

  @property
  def answer(self) -> str | None:
    return self.fields.get(self.tags[-1])

  @property
  def final_answer(self) -> str | None:
    """The answer field; for a response with no tags at all, the whole stripped text."""
    if not self.has_tags:
      return self.text.strip() or None
    return self.answer


@functools.lru_cache(maxsize=32)
def _tag_pattern(tags: tuple[str, ...]) -> re.Pattern[str]:
  names = "|".join(re.escape(t) for t in tags)
  return re.compile(rf"<\s*(/?)\s*({names})\s*>", re.IGNORECASE)


def _quote(text: str) -> str:
  text = " ".join(text.split())
  return repr(text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "...")


def parse_response(text: str, tags: Sequence[str] = DEFAULT_TAGS) -> ParsedResponse:
  """Parses `text` into the fields named by `tags` (see the module docstring for the rules)."""
  tags = tuple(t.lower() for t in tags)
  if not tags or len(set(tags)) != len(tags):
    raise ValueError(f"tags must be distinct and non-empty; got {tags}")
  # Every tag occurrence: (start, end, tag, is_closing).
  marks = [(m.start(), m.end(), m.group(2).lower(), bool(m.group(1)))
           for m in _tag_pattern(tags).finditer(text)]
  problems: list[str] = []
  # tag -> (open_start, open_end, close_start, close_end) of well-paired tags.
  spans: dict[str, tuple[int, int, int, int]] = {}
  for tag in tags:
    opens = [m for m in marks if m[2] == tag and not m[3]]
    closes = [m for m in marks if m[2] == tag and m[3]]
    if not opens and not closes:
      problems.append(f"missing <{tag}>")
    elif len(opens) > 1 or len(closes) > 1:
      problems.append(f"<{tag}> repeated ({len(opens)} opening, {len(closes)} closing tags)")
    elif not closes:
      problems.append(f"<{tag}> is never closed")
    elif not opens:
      problems.append(f"</{tag}> has no opening tag")
    elif closes[0][0] < opens[0][0]:
      problems.append(f"</{tag}> comes before <{tag}>")
    else:
      spans[tag] = (opens[0][0], opens[0][1], closes[0][0], closes[0][1])

  fields: dict[str, str | None] = {tag: None for tag in tags}
  nested: set[str] = set()  # tags with a mark inside another field: never exposed
  for tag, (_, inner_start, inner_end, _) in spans.items():
    inner = sorted({m[2] for m in marks if inner_start <= m[0] < inner_end})
    problems.extend(f"<{other}> inside <{tag}>" for other in inner)
    nested.update(inner)
    if inner:
      nested.add(tag)
  for tag, (_, inner_start, inner_end, _) in spans.items():
    if tag in nested:
      continue
    content = text[inner_start:inner_end].strip()
    if content:
      fields[tag] = content
    else:
      problems.append(f"empty <{tag}>")

  if not problems:
    order = sorted(tags, key=lambda t: spans[t][0])
    if order != list(tags):
      problems.append(f"tags out of order: got {', '.join(order)}; expected {', '.join(tags)}")
    else:
      bounds = [0] + [b for t in tags for b in (spans[t][0], spans[t][3])] + [len(text)]
      for start, end in zip(bounds[::2], bounds[1::2]):
        if text[start:end].strip():
          problems.append(f"text outside the tags: {_quote(text[start:end])}")
  return ParsedResponse(text=text, tags=tags, fields=fields, problems=tuple(problems),
                        has_tags=bool(marks))
