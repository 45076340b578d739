"""The driver's metric outputs: a JSONL file, TensorBoard events and a progress bar.

    writer = MetricWriter(workdir, resume_step=restored_step)   # None on a fresh run
    bar = ProgressBar(total_steps, initial=restored_step or 0)
    for step in ...:
      metrics = ...                                   # flat or nested, device scalars fine
      writer.write(step, metrics, stage="rl_general")
      bar.update(step, metrics)
      checkpointer.save(...)                          # after the step's metrics are written
    writer.close(); bar.close()

JSONL: one object per `write`: {"step": int, "stage": str, <metric>: number or null, ...}
plus "nonfinite": {<metric>: "nan" | "inf" | "-inf"} when some values were not finite (they
are written as null, so the file stays valid JSON; writing never fails on them). Nested
mappings are flattened with "/" ("rewards": {"format": 1.0} -> "rewards/format"); numpy and
JAX scalars (and size-1 arrays) become Python numbers, booleans 0/1, None stays null.

Resuming. `step` is the global training step, increasing over the whole schedule (not reset
per stage). Writing the metrics of step s before saving the checkpoint of step s, a run
restored from the checkpoint of step s finds in the JSONL all lines up to step s and maybe
lines of later steps that the killed run wrote after its last checkpoint. `MetricWriter`
with `resume_step=s` therefore drops the lines with step > s (and a partial last line) before
appending, and starts TensorBoard with `purge_step=s + 1`, which hides the killed run's
events of later steps; with `resume_step=None` (a fresh run) both start empty. So a resumed
run's JSONL equals an uninterrupted run's.

Only process 0 writes (`jax.process_index() == 0`); elsewhere the writer and the progress
bar do nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import tqdm

_log = logging.getLogger(__name__)

RESERVED_KEYS = ("step", "stage", "nonfinite")
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _is_main_process() -> bool:
  return jax.process_index() == 0


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested mappings -> one level, keys joined with "/"."""
  out: dict[str, Any] = {}
  for key, value in metrics.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten_metrics(value, f"{name}/"))
    else:
      out[name] = value
  return out


def to_scalar(name: str, value: Any) -> int | float | None:
  """A Python number from a Python/numpy/JAX scalar or size-1 array (bools -> 0/1).

  Raises:
    ValueError/TypeError: naming the metric when the value is not one number.
  """
  if value is None or isinstance(value, (bool, int, float)):
    return int(value) if isinstance(value, bool) else value
  if isinstance(value, (np.generic, np.ndarray, jax.Array)):
    array = np.asarray(value)
    if array.size != 1:
      raise ValueError(f"metric {name!r} has shape {array.shape}; metrics must be scalars")
    item = array.reshape(()).item()
    if isinstance(item, (bool, int, float)):
      return int(item) if isinstance(item, bool) else item
  raise TypeError(f"metric {name!r} is a {type(value).__name__}, not a number")


def _nonfinite_kind(value: float) -> str:
  return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def metrics_record(step: int, stage: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
  """The JSONL object of one step (see the module docstring)."""
  flat = flatten_metrics(metrics)
  clash = sorted(set(flat) & set(RESERVED_KEYS))
  if clash:
    raise ValueError(f"metric names {clash} are reserved ({', '.join(RESERVED_KEYS)})")
  record: dict[str, Any] = {"step": int(step), "stage": stage}
  nonfinite: dict[str, str] = {}
  for name, value in flat.items():
    value = to_scalar(name, value)
    if isinstance(value, float) and not math.isfinite(value):
      nonfinite[name] = _nonfinite_kind(value)
      value = None
    record[name] = value
  if nonfinite:
    record["nonfinite"] = nonfinite
  return record


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of a metrics file; unreadable lines (a partial last line) are skipped."""
  records = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        _log.warning("%s:%d: skipping an unreadable line", path, number)
  return records


def truncate_jsonl(path: str | os.PathLike, last_step: int | None) -> int:
  """Keeps the records with step <= last_step (none when None), rewriting the file atomically.

  Returns:
    The number of records kept.
  """
  if not os.path.exists(path):
    return 0
  kept = [] if last_step is None else [r for r in read_jsonl(path)
                                       if r.get("step", math.inf) <= last_step]
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in kept)
  os.replace(tmp, path)
  return len(kept)


class MetricWriter:
  """Writes per-step metrics to `logdir`/metrics.jsonl and TensorBoard (process 0 only).

  Args:
    logdir: the run's output directory (created if missing).
    resume_step: the step of the restored checkpoint: later records are dropped (see the
      module docstring); None for a fresh run, which starts from empty outputs.
    tensorboard: also write TensorBoard events to `logdir`/tensorboard.
    enabled: whether to write at all; default: on process 0 only.
  """

  def __init__(self, logdir: str | os.PathLike, *, resume_step: int | None = None,
               tensorboard: bool = True, enabled: bool | None = None):
    self.logdir = os.fspath(logdir)
    self.jsonl_path = os.path.join(self.logdir, METRICS_FILE)
    self.enabled = _is_main_process() if enabled is None else enabled
    self._file = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(self.logdir, exist_ok=True)
    truncate_jsonl(self.jsonl_path, resume_step)
    self._file = open(self.jsonl_path, "a", encoding="utf-8")
    if tensorboard:
      import tensorboardX  # only process 0 needs it
      purge = 0 if resume_step is None else resume_step + 1
      self._tb = tensorboardX.SummaryWriter(os.path.join(self.logdir, TENSORBOARD_DIR),
                                            purge_step=purge, flush_secs=30)

  def write(self, step: int, metrics: Mapping[str, Any], *, stage: str = "") -> None:
    """Appends one record (flushed at once, so a killed run loses nothing written)."""
    if not self.enabled:
      return
    if self._file is None:
      raise RuntimeError(f"MetricWriter for {self.logdir} is closed")
    record = metrics_record(step, stage, metrics)
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for name, value in record.items():
        if name not in RESERVED_KEYS and value is not None:
          self._tb.add_scalar(name, value, global_step=record["step"])
      for name, kind in record.get("nonfinite", {}).items():
        self._tb.add_scalar(name, float(kind), global_step=record["step"])

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


# Metric name -> short label shown in the progress bar, when the metric is present.
DEFAULT_PROGRESS_KEYS: dict[str, str] = {
    "loss": "loss",
    "rewards/mean": "reward",
    "refusal_rate": "refusal",
    "grad_norm": "|g|",
    "skipped": "skipped",
}


def progress_postfix(metrics: Mapping[str, Any], keys: Mapping[str, str]) -> dict[str, str]:
  """{label: value with 4 significant digits} for the keys present in `metrics`."""
  flat = flatten_metrics(metrics)
  return {label: f"{to_scalar(name, flat[name]):.4g}" for name, label in keys.items()
          if flat.get(name) is not None}


class ProgressBar:
  """A tqdm bar over training steps showing key figures (process 0 only).

  Args:
    total: the last step of the run.
    initial: the step a resumed run starts from.
    keys: metric name -> label of the figures to show (a sequence: names as labels).
    desc: the bar's description (e.g. the stage); `set_stage` changes it.
    enabled: whether to show it; default: on process 0 only.
  """

  def __init__(self, total: int, *, initial: int = 0,
               keys: Mapping[str, str] | Sequence[str] = DEFAULT_PROGRESS_KEYS,
               desc: str = "", enabled: bool | None = None, **tqdm_kwargs: Any):
    self.keys = dict(keys) if isinstance(keys, Mapping) else {k: k for k in keys}
    enabled = _is_main_process() if enabled is None else enabled
    self._bar = tqdm.tqdm(total=total, initial=initial, desc=desc, disable=not enabled,
                          dynamic_ncols=True, **tqdm_kwargs)

  def set_stage(self, stage: str) -> None:
    self._bar.set_description(stage)

  def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
    """Moves the bar to `step` and shows the key figures of `metrics`."""
    if metrics is not None:
      self._bar.set_postfix(progress_postfix(metrics, self.keys), refresh=False)
    self._bar.update(step - self._bar.n)

  @property
  def n(self) -> int:
    return self._bar.n

  def close(self) -> None:
    self._bar.close()

  def __enter__(self) -> ProgressBar:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

