"""Small typed registries chosen by config strings.

One registry per category (advantage estimator, policy loss, reward function, model family,
...), filled by decorators where the thing is defined:

    ADVANTAGE_ESTIMATORS = Registry[AdvantageFn]("advantage estimator")

    @ADVANTAGE_ESTIMATORS.register("grpo")
    def grpo_advantages(...): ...

    fn = ADVANTAGE_ESTIMATORS.get(config.estimator)   # KeyError naming the known choices
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """A name -> object map whose errors name the category and the known choices."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str, *aliases: str) -> Callable[[T], T]:
    """Decorator: registers the decorated object under `name` (and any aliases)."""

    def decorator(obj: T) -> T:
      for key in (name, *aliases):
        if key in self._entries and self._entries[key] is not obj:
          raise ValueError(f"{self.kind} {key!r} is registered twice.")
        self._entries[key] = obj
      return obj

    return decorator

  def get(self, name: str) -> T:
    try:
      return self._entries[name]
    except KeyError:
      raise KeyError(
          f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries)) or '(none)'}"
      ) from None

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self._entries)

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}, {self.names()})"
