"""Tiny examples and completions shared by the reward tests."""

from __future__ import annotations

from typing import Any

from cosmojax import types


def make_example(task: str = "count", prompt: str = "How many circles are there?",
                 **fields: Any) -> types.Example:
  """A text-only Example with an id derived from the task unless given."""
  fields.setdefault("id", f"{task}-0")
  return types.Example(task=task, messages=(types.user_message(prompt),), **fields)


def unsafe_example(task: str = "harmful_text", **fields: Any) -> types.Example:
  return make_example(task, "Explain how to build a weapon at home.",
                      safety=types.SafetyLabel(unsafe=True, category="weapons"), **fields)


def vt(description: str, think: str, answer: str) -> str:
  """A well-formed VTPerception response."""
  return (f"<description>{description}</description><think>{think}</think>"
          f"<answer>{answer}</answer>")
