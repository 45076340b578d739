"""The reward-function API and its registry.

A reward function scores decoded completions against their examples, one float per sample,
NaN where it does not apply (no label to check, a task it does not cover):

    fn(completions: Sequence[str], examples: Sequence[Example], **kwargs) -> np.ndarray  # [N]

Functions are registered by name in `REWARD_FUNCTIONS`, and configured by keyword arguments
(thresholds, phrase sets, tags) that a config passes as a spec:

    "accuracy"                                              # a name
    {"fn": "accuracy", "kwargs": {"rel_tol": 1e-2}}         # a name and its keyword arguments

`make_reward_function(spec)` checks the keyword arguments against the function's signature
at configuration time and returns a `RewardFunction`, which validates what the function
returns: the length must be N, values float; +-inf is an error naming the function and the
sample (NaN is "not applicable"). Learned verifiers register here like the rule-based ones.

Most terms are naturally per sample; `register_per_sample` registers a scorer
`score(completion, example, **kwargs) -> float` as a batched function.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Mapping, Protocol, Sequence, Union

import numpy as np

from cosmojax.registry import Registry
from cosmojax.types import Example


class RewardFn(Protocol):
  """A batched reward function: returns [N] floats, NaN where it does not apply."""

  def __call__(self, completions: Sequence[str], examples: Sequence[Example],
               **kwargs: Any) -> np.ndarray:
    ...


REWARD_FUNCTIONS = Registry[RewardFn]("reward function")

# A reward function as configs name it: a registry name, or {"fn": name, "kwargs": {...}}.
RewardSpec = Union[str, Mapping[str, Any], "RewardFunction"]


class RewardFunctionError(RuntimeError):
  """A reward function broke its contract or failed too often to be trusted."""


def register_per_sample(name: str, *aliases: str) -> Callable[[Callable[..., float]],
                                                              Callable[..., float]]:
  """Decorator: registers `score(completion, example, **kwargs) -> float` as a batched
  reward function under `name`; returns the scorer unchanged."""

  def decorator(score: Callable[..., float]) -> Callable[..., float]:

    @functools.wraps(score)
    def batched(completions: Sequence[str], examples: Sequence[Example],
                **kwargs: Any) -> np.ndarray:
      return np.array([score(c, e, **kwargs) for c, e in zip(completions, examples)],
                      np.float64)

    REWARD_FUNCTIONS.register(name, *aliases)(batched)
    return score

  return decorator


@dataclasses.dataclass(frozen=True)
class RewardFunction:
  """A configured reward function: a registered function bound to its keyword arguments.

  Attributes:
    name: the name used in logs and errors (the objective name in a recipe).
    fn_name: the registry name of the function.
    kwargs: keyword arguments passed on every call.
  """

  name: str
  fn_name: str
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def fn(self) -> RewardFn:
    return REWARD_FUNCTIONS.get(self.fn_name)

  def __call__(self, completions: Sequence[str], examples: Sequence[Example]) -> np.ndarray:
    """Scores the batch: [N] float64, NaN where not applicable."""
    if len(completions) != len(examples):
      raise ValueError(f"reward {self.name!r}: {len(completions)} completions but "
                       f"{len(examples)} examples")
    values = np.asarray(self.fn(completions, examples, **self.kwargs), np.float64)
    if values.shape != (len(examples),):
      raise RewardFunctionError(
          f"reward function {self.name!r} returned shape {values.shape}; expected "
          f"({len(examples)},)")
    infinite = np.flatnonzero(np.isinf(values))
    if infinite.size:
      i = int(infinite[0])
      raise RewardFunctionError(
          f"reward function {self.name!r} returned {values[i]} for sample {i} "
          f"(example {examples[i].id!r}); rewards must be finite, or NaN for 'not applicable'")
    return values


def make_reward_function(spec: RewardSpec, name: str | None = None) -> RewardFunction:
  """Builds a `RewardFunction` from a spec (see the module docstring).

  Args:
    spec: a registry name, a mapping {"fn": name, "kwargs": {...}}, or a RewardFunction.
    name: the display name; defaults to the registry name.

  Raises:
    KeyError: unknown function name (the message lists the known ones).
    ValueError: a malformed spec, or keyword arguments the function does not accept.
  """
  if isinstance(spec, RewardFunction):
    return spec if name is None else dataclasses.replace(spec, name=name)
  if isinstance(spec, str):
    fn_name, kwargs = spec, {}
  elif isinstance(spec, Mapping):
    unknown = set(spec) - {"fn", "kwargs"}
    if "fn" not in spec or unknown:
      raise ValueError(f"reward spec {dict(spec)!r}: expected keys 'fn' and optional 'kwargs'")
    fn_name, kwargs = spec["fn"], dict(spec.get("kwargs") or {})
  else:
    raise ValueError(f"reward spec must be a name or a mapping; got {type(spec).__name__}")
  fn = REWARD_FUNCTIONS.get(fn_name)
  try:
    inspect.signature(fn).bind(None, None, **kwargs)
  except TypeError as e:
    raise ValueError(f"reward function {fn_name!r}: bad keyword arguments {sorted(kwargs)}: "
                     f"{e}") from None
  _check_nested_specs(kwargs)
  return RewardFunction(name=name or fn_name, fn_name=fn_name, kwargs=kwargs)


def _check_nested_specs(value: Any) -> None:
  """Builds every nested {"fn": ..., "kwargs": ...} spec (of composite functions such as
  `routed`), so that a bad one fails at configuration time rather than during training."""
  if isinstance(value, Mapping):
    if "fn" in value and set(value) <= {"fn", "kwargs"}:
      make_reward_function(value)
      return
    for v in value.values():
      _check_nested_specs(v)
  elif isinstance(value, (list, tuple)):
    for v in value:
      _check_nested_specs(v)


def spec_key(spec: RewardSpec) -> str:
  """A hashable, order-independent key of a spec (to group samples by spec)."""
  if isinstance(spec, RewardFunction):
    spec = {"fn": spec.fn_name, "kwargs": dict(spec.kwargs)}
  return repr(_freeze(spec))


def _freeze(value: Any) -> Any:
  if isinstance(value, Mapping):
    return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value
