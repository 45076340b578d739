"""Tests of cosmojax.eval.writers: JSONL records, resume truncation, TensorBoard, progress."""

from __future__ import annotations

import glob
import io
import json
import math
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from cosmojax.eval import writers


def _events(logdir) -> list[event_pb2.Event]:
  """Every event of the TensorBoard files under `logdir` (TFRecord framing: length,
  length CRC, payload, payload CRC), in file order."""
  events = []
  for path in sorted(glob.glob(os.path.join(logdir, "tensorboard", "events.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      payload = data[offset + 12:offset + 12 + length]
      events.append(event_pb2.Event.FromString(payload))
      offset += 12 + length + 4
  return events


def _scalars(events) -> dict[tuple[str, int], float]:
  return {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value}


def test_record_converts_scalars_and_flags_nonfinite_values():
  record = writers.metrics_record(7, "rl_joint", {
      "loss": jnp.float32(0.5),
      "skipped": jnp.bool_(True),
      "count": np.int64(3),
      "rewards": {"format": np.float32(1.0), "safety": np.array([0.25])},
      "grad_norm": jnp.float32(math.inf),
      "kl": float("nan"),
      "absent": None,
  })
  assert record == {"step": 7, "stage": "rl_joint", "loss": 0.5, "skipped": 1, "count": 3,
                    "rewards/format": 1.0, "rewards/safety": 0.25, "grad_norm": None,
                    "kl": None, "absent": None,
                    "nonfinite": {"grad_norm": "inf", "kl": "nan"}}
  json.dumps(record, allow_nan=False)  # strict JSON


@pytest.mark.parametrize("metrics, error, message", [
    ({"logits": np.zeros(3)}, ValueError, r"metric 'logits' has shape \(3,\)"),
    ({"name": "x"}, TypeError, r"metric 'name' is a str"),
    ({"step": 1.0}, ValueError, r"\['step'\] are reserved"),
])
def test_bad_metrics_are_named(metrics, error, message):
  with pytest.raises(error, match=message):
    writers.metrics_record(0, "", metrics)


def _run(logdir, steps, resume_step=None, eval_at=()):
  with writers.MetricWriter(logdir, resume_step=resume_step) as writer:
    for step in steps:
      writer.write(step, {"loss": 1.0 / step, "rewards": {"format": step / 10}}, stage="rl")
      if step in eval_at:
        writer.write(step, {"eval/count/accuracy": 0.5}, stage="rl")


def test_resume_truncates_later_steps_and_matches_an_uninterrupted_run(tmp_path):
  full, resumed = tmp_path / "full", tmp_path / "resumed"
  _run(full, range(1, 7), eval_at=(3,))
  # The killed run wrote steps 1..5 (its last checkpoint is step 3) and half a line.
  _run(resumed, range(1, 6), eval_at=(3,))
  with open(resumed / writers.METRICS_FILE, "a") as f:
    f.write('{"step": 6, "lo')
  _run(resumed, range(4, 7), resume_step=3)
  assert writers.read_jsonl(resumed / writers.METRICS_FILE) == writers.read_jsonl(
      full / writers.METRICS_FILE)
  assert [r["step"] for r in writers.read_jsonl(full / writers.METRICS_FILE)] == [
      1, 2, 3, 3, 4, 5, 6]


def test_fresh_run_starts_empty(tmp_path):
  _run(tmp_path, range(1, 4))
  _run(tmp_path, range(1, 3))
  assert [r["step"] for r in writers.read_jsonl(tmp_path / writers.METRICS_FILE)] == [1, 2]


def test_tensorboard_scalars_and_purge_on_resume(tmp_path):
  _run(tmp_path, range(1, 4))
  scalars = _scalars(_events(tmp_path))
  assert scalars[("loss", 2)] == pytest.approx(0.5)
  assert scalars[("rewards/format", 3)] == pytest.approx(0.3)
  with writers.MetricWriter(tmp_path, resume_step=1) as writer:
    writer.write(2, {"loss": math.nan}, stage="rl")
  events = _events(tmp_path)
  # The resumed writer's file starts with a purge of steps >= 2 ...
  purges = [e.step for e in events if e.HasField("session_log")]
  assert 2 in purges
  # ... and carries the non-finite value as such.
  assert math.isnan(_scalars([e for e in events if e.summary.value][-1:])[("loss", 2)])


def test_disabled_writer_writes_nothing(tmp_path):
  with writers.MetricWriter(tmp_path / "run", enabled=False) as writer:
    writer.write(1, {"loss": 1.0})
  assert not os.path.exists(tmp_path / "run")


def test_progress_bar_shows_key_figures():
  assert writers.progress_postfix(
      {"loss": jnp.float32(0.123456), "rewards/mean": 0.5, "other": 1.0},
      {"loss": "loss", "rewards/mean": "R", "missing": "m"}) == {"loss": "0.1235", "R": "0.5"}
  out = io.StringIO()
  # mininterval/miniters 0/1: redraw on every update, as slow training steps do.
  with writers.ProgressBar(10, initial=2, keys=["loss"], desc="sft", enabled=True,
                           file=out, mininterval=0, miniters=1) as bar:
    bar.update(3, {"loss": 0.25})
    bar.update(5, {"loss": math.nan})
    assert bar.n == 5
  text = out.getvalue()
  assert "sft" in text and "loss=0.25" in text and "loss=nan" in text and "5/10" in text
