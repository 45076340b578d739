"""The reward API's contract and the evaluator's failure isolation."""

import logging
import threading

import numpy as np
import pytest

from cosmojax.rewards import (REWARD_FUNCTIONS, RewardEvaluator, RewardFunctionError,
                              make_reward_function)
from tests.rewards.fixtures import make_example

_BARRIER = threading.Barrier(2)
_SEEN: list[str] = []


@REWARD_FUNCTIONS.register("test_fails_on_bad_ids")
def _fails_on_bad_ids(completions, examples, *, value=1.0):
  del completions
  for e in examples:
    if e.id.startswith("bad"):
      raise RuntimeError(f"cannot score {e.id}")
  return np.full(len(examples), value)


@REWARD_FUNCTIONS.register("test_returns_inf")
def _returns_inf(completions, examples):
  del completions
  return np.array([np.inf if e.id == "x-1" else 0.0 for e in examples])


@REWARD_FUNCTIONS.register("test_wrong_length")
def _wrong_length(completions, examples):
  del completions, examples
  return np.zeros(1)


@REWARD_FUNCTIONS.register("test_waits_for_a_peer")
def _waits_for_a_peer(completions, examples):
  del completions
  _BARRIER.wait(timeout=10)  # only passes if another function runs at the same time
  return np.ones(len(examples))


@REWARD_FUNCTIONS.register("test_records_ids")
def _records_ids(completions, examples):
  del completions
  _SEEN.extend(e.id for e in examples)
  return np.full(len(examples), np.nan)  # NaN: not applicable, never a failure


def _batch(*ids):
  return [f"completion {i}" for i in ids], [make_example(id=i) for i in ids]


def test_a_raising_sample_gets_nan_and_is_counted_and_logged(caplog):
  evaluator = RewardEvaluator([make_reward_function("test_fails_on_bad_ids", name="flaky")])
  completions, examples = _batch("ok-0", "ok-1", "bad-2", "ok-3")
  with caplog.at_level(logging.WARNING, logger="cosmojax.rewards.evaluator"):
    results = evaluator.evaluate(completions, examples)
  np.testing.assert_array_equal(results.values["flaky"], [1.0, 1.0, np.nan, 1.0])
  assert results.failures == {"flaky": 1} and evaluator.failure_counts == {"flaky": 1}
  [record] = caplog.records
  assert "'flaky' failed on sample 2 (example 'bad-2'): RuntimeError: cannot score bad-2" in (
      record.getMessage())


def test_a_function_failing_on_the_whole_batch_is_an_error():
  evaluator = RewardEvaluator([make_reward_function("test_fails_on_bad_ids", name="broken")])
  with pytest.raises(RewardFunctionError,
                     match="'broken' failed on all 3 samples of the batch; first error: "
                           "RuntimeError: cannot score bad-0") as info:
    evaluator.evaluate(*_batch("bad-0", "bad-1", "bad-2"))
  assert isinstance(info.value.__cause__, RuntimeError)


def test_a_failure_rate_above_the_limit_over_the_window_is_an_error():
  evaluator = RewardEvaluator([make_reward_function("test_fails_on_bad_ids", name="flaky")],
                              max_failure_rate=0.25, window=8, min_window=8)
  evaluator.evaluate(*_batch("ok-0", "ok-1", "ok-2", "bad-3"))  # 1/4: window not yet full
  evaluator.evaluate(*_batch("bad-0"))  # one sample alone: counted, not an all-fail error
  with pytest.raises(RewardFunctionError, match=r"'flaky' failed on 37.5% of its last 8 "
                                                r"samples \(max_failure_rate 25.0%\)"):
    evaluator.evaluate(*_batch("ok-0", "bad-1", "ok-2"))  # 3/8 > 25%
  assert evaluator.failure_counts == {"flaky": 3}


def test_infinite_values_and_wrong_lengths_are_errors_naming_function_and_sample():
  inf = RewardEvaluator([make_reward_function("test_returns_inf", name="unbounded")])
  with pytest.raises(RewardFunctionError,
                     match=r"'unbounded' returned inf for sample 1 \(example 'x-1'\)"):
    inf.evaluate(*_batch("x-0", "x-1"))
  short = RewardEvaluator([make_reward_function("test_wrong_length")])
  with pytest.raises(RewardFunctionError, match=r"returned shape \(1,\); expected \(3,\)"):
    short.evaluate(*_batch("a", "b", "c"))


def test_functions_run_concurrently_with_workers_and_submit_returns_a_future():
  fns = [make_reward_function("test_waits_for_a_peer", name=n) for n in ("left", "right")]
  evaluator = RewardEvaluator(fns, max_workers=2)
  try:
    results = evaluator.submit(*_batch("a", "b")).result(timeout=30)
  finally:
    evaluator.close()
  assert set(results.values) == {"left", "right"}
  assert all(v.tolist() == [1.0, 1.0] for v in results.values.values())


def test_subsets_restrict_the_samples_a_function_sees():
  _SEEN.clear()
  evaluator = RewardEvaluator([make_reward_function("test_records_ids", name="rec"),
                               make_reward_function("test_fails_on_bad_ids", name="all")])
  results = evaluator.evaluate(*_batch("a", "b", "c"), subsets={"rec": np.array([2, 0])})
  assert _SEEN == ["c", "a"]
  assert results.failures == {"rec": 0, "all": 0}
  with pytest.raises(ValueError, match=r"unknown reward functions \['nope'\]"):
    evaluator.evaluate(*_batch("a"), subsets={"nope": np.array([0])})
  with pytest.raises(ValueError, match="names must be unique"):
    RewardEvaluator([make_reward_function("format"), make_reward_function("format")])


def test_specs_are_checked_when_configured():
  fn = make_reward_function({"fn": "test_fails_on_bad_ids", "kwargs": {"value": 0.5}})
  assert fn(*_batch("a")).tolist() == [0.5]
  with pytest.raises(ValueError, match=r"reward function 'accuracy': bad keyword arguments "
                                       r"\['tolerance'\]"):
    make_reward_function({"fn": "accuracy", "kwargs": {"tolerance": 0.1}})
  with pytest.raises(KeyError, match="unknown reward function 'nope'; known: accuracy"):
    make_reward_function("nope")
  with pytest.raises(ValueError, match="expected keys 'fn' and optional 'kwargs'"):
    make_reward_function({"name": "accuracy"})
  with pytest.raises(ValueError, match="2 completions but 1 examples"):
    fn(["a", "b"], [make_example()])


def test_nested_specs_of_composites_are_checked_when_configured():
  with pytest.raises(ValueError, match=r"reward function 'accuracy': bad keyword arguments "
                                       r"\['tol'\]"):
    make_reward_function({"fn": "task_aware", "kwargs": {
        "routes": {"count": {"fn": "accuracy", "kwargs": {"tol": 1}}}}})
  with pytest.raises(KeyError, match="unknown reward function 'acuracy'"):
    make_reward_function({"fn": "efficiency", "kwargs": {"correctness": {"fn": "acuracy"}}})
