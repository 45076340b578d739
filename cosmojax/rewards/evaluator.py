"""Batched, optionally concurrent evaluation of several reward functions, with failure isolation.

Failure policy (a reward function must never kill training because of one odd sample, and
must never silently stop working):

- A function is first called on its whole batch. If that raises, it is called again on each
  sample alone; a sample whose call raises gets NaN, is counted in `RewardResults.failures`
  and logged (warning) with the function name, the example id and the batch index.
- If every sample of a batch of at least `all_fail_min_batch` samples fails, the function is
  broken: `RewardFunctionError` naming it, chained to the first sample's exception.
- Each function keeps a window of its last `window` per-sample outcomes; once it holds at
  least `min_window` outcomes and the failure rate exceeds `max_failure_rate`, the same error.
- Contract violations (a wrong output length, +-inf values) are errors at once; they are
  bugs in the function, not properties of a sample.

With `max_workers > 0`, the functions of one batch run concurrently in a thread pool (useful
when some of them wait on a device or a server, as learned verifiers do); `submit` runs a
whole evaluation on a background thread and returns its future, so that the driver can
overlap reward computation with other work.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
from typing import Mapping, Sequence

import numpy as np

from cosmojax.rewards.base import RewardFunction, RewardFunctionError
from cosmojax.types import Example

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RewardResults:
  """What one evaluation produced.

  Attributes:
    values: function name -> [N] float64 rewards, NaN where not applicable, not evaluated
      (outside the function's subset) or failed.
    failures: function name -> number of samples whose evaluation raised in this batch.
  """

  values: Mapping[str, np.ndarray]
  failures: Mapping[str, int]


class RewardEvaluator:
  """Evaluates named reward functions on batches with the failure policy above.

  Args:
    functions: the reward functions, with unique names.
    max_workers: threads running the functions of a batch concurrently; 0 runs them in turn.
    max_failure_rate: the largest tolerated fraction of failed samples over the window.
    window: how many of a function's latest per-sample outcomes the rate is taken over.
    min_window: outcomes needed before the rate is checked.
    all_fail_min_batch: the smallest batch whose complete failure is an error.
  """

  def __init__(self, functions: Sequence[RewardFunction], *, max_workers: int = 0,
               max_failure_rate: float = 0.2, window: int = 1024, min_window: int = 64,
               all_fail_min_batch: int = 2):
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
      raise ValueError(f"reward function names must be unique; got {names}")
    if not 0.0 <= max_failure_rate <= 1.0:
      raise ValueError(f"max_failure_rate must lie in [0, 1]; got {max_failure_rate}")
    if not 1 <= min_window <= window:
      raise ValueError(f"need 1 <= min_window <= window; got {min_window}, {window}")
    self.functions = tuple(functions)
    self.max_failure_rate = max_failure_rate
    self.min_window = min_window
    self.all_fail_min_batch = all_fail_min_batch
    self._outcomes = {n: collections.deque(maxlen=window) for n in names}
    self._lock = threading.Lock()
    self._pool = (concurrent.futures.ThreadPoolExecutor(max_workers, "reward")
                  if max_workers > 0 else None)
    # `submit` runs `evaluate` here, not in `_pool`, which `evaluate` itself waits on.
    self._background = concurrent.futures.ThreadPoolExecutor(1, "reward-submit")
    self.failure_counts: dict[str, int] = {n: 0 for n in names}

  def evaluate(self, completions: Sequence[str], examples: Sequence[Example],
               subsets: Mapping[str, np.ndarray] | None = None) -> RewardResults:
    """Scores the batch with every function.

    Args:
      completions: N decoded completions.
      examples: the N examples they answer (an example repeats for each of its samples).
      subsets: function name -> indices of the samples it scores (default: all); the
        others get NaN without a call.

    Returns:
      RewardResults with [N] values per function.
    """
    if len(completions) != len(examples):
      raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
    subsets = dict(subsets or {})
    unknown = set(subsets) - set(self._outcomes)
    if unknown:
      raise ValueError(f"subsets name unknown reward functions {sorted(unknown)}")
    jobs = [(f, np.arange(len(examples)) if f.name not in subsets
             else np.asarray(subsets[f.name], np.int64)) for f in self.functions]
    if self._pool is None:
      outputs = [self._run(f, idx, completions, examples) for f, idx in jobs]
    else:
      futures = [self._pool.submit(self._run, f, idx, completions, examples) for f, idx in jobs]
      outputs = [fut.result() for fut in futures]
    values, failures = {}, {}
    for (f, idx), (sub_values, n_failed) in zip(jobs, outputs):
      full = np.full(len(examples), np.nan)
      full[idx] = sub_values
      values[f.name], failures[f.name] = full, n_failed
    return RewardResults(values=values, failures=failures)

  def submit(self, completions: Sequence[str], examples: Sequence[Example],
             subsets: Mapping[str, np.ndarray] | None = None
             ) -> concurrent.futures.Future[RewardResults]:
    """Like `evaluate`, on a background thread; returns its future."""
    return self._background.submit(self.evaluate, completions, examples, subsets)

  def close(self) -> None:
    self._background.shutdown(wait=True)
    if self._pool is not None:
      self._pool.shutdown(wait=True)

  def _run(self, f: RewardFunction, idx: np.ndarray, completions: Sequence[str],
           examples: Sequence[Example]) -> tuple[np.ndarray, int]:
    if idx.size == 0:
      return np.zeros(0), 0
    sub_c = [completions[i] for i in idx]
    sub_e = [examples[i] for i in idx]
    try:
      values = f(sub_c, sub_e)
      failed = np.zeros(idx.size, bool)
      first_error = None
    except RewardFunctionError:
      raise
    except Exception:  # pylint: disable=broad-except  # isolated per sample below
      values, failed, first_error = self._run_per_sample(f, idx, sub_c, sub_e)
    self._record(f.name, failed, first_error)
    return values, int(failed.sum())

  def _run_per_sample(self, f: RewardFunction, idx: np.ndarray, sub_c: Sequence[str],
                      sub_e: Sequence[Example]) -> tuple[np.ndarray, np.ndarray, Exception | None]:
    values = np.full(idx.size, np.nan)
    failed = np.zeros(idx.size, bool)
    first_error = None
    for j, (c, e) in enumerate(zip(sub_c, sub_e)):
      try:
        values[j] = f([c], [e])[0]
      except RewardFunctionError:
        raise
      except Exception as exc:  # pylint: disable=broad-except  # the point of isolation
        failed[j] = True
        first_error = first_error or exc
        logger.warning("reward function %r failed on sample %d (example %r): %s: %s",
                       f.name, int(idx[j]), e.id, type(exc).__name__, exc)
    return values, failed, first_error

  def _record(self, name: str, failed: np.ndarray, first_error: Exception | None) -> None:
    with self._lock:
      self.failure_counts[name] += int(failed.sum())
      outcomes = self._outcomes[name]
      outcomes.extend(failed.tolist())
      rate = sum(outcomes) / len(outcomes)
      window_full = len(outcomes) >= self.min_window
    if failed.size >= self.all_fail_min_batch and failed.all():
      raise RewardFunctionError(
          f"reward function {name!r} failed on all {failed.size} samples of the batch; "
          f"first error: {type(first_error).__name__}: {first_error}") from first_error
    if failed.any() and window_full and rate > self.max_failure_rate:
      raise RewardFunctionError(
          f"reward function {name!r} failed on {rate:.1%} of its last {len(outcomes)} samples "
          f"(max_failure_rate {self.max_failure_rate:.1%}); an error of this batch: "
          f"{type(first_error).__name__}: {first_error}") from first_error
