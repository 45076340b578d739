"""Tests of cosmojax.eval.report on a three-stage run written by the metric writer."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from PIL import Image

from cosmojax.eval import report, writers
from cosmojax.eval.suite_metrics import Metric, comparison_table, metrics_to_scalars

_OBJECTIVES = {"rl_general": ("format", "task_aware"),
               "rl_joint": ("format", "helpful", "task_aware", "visual_focus")}
_EVALS = {
    "sft": {"capability/accuracy": Metric(0.40, 20), "unsafe/compliance": Metric(0.60, 10),
            "benign_probe/over_refusal": Metric(0.10, 10)},
    "rl_general": {"capability/accuracy": Metric(0.55, 20), "unsafe/compliance": Metric(0.65, 10),
                   "benign_probe/over_refusal": Metric(0.05, 10)},
    "rl_joint": {"capability/accuracy": Metric(0.60, 20), "unsafe/compliance": Metric(0.20, 10),
                 "benign_probe/over_refusal": Metric(0.15, 10)},
}


def _write_run(run_dir) -> None:
  rng = np.random.default_rng(0)
  step = 0
  with writers.MetricWriter(run_dir) as writer:
    for stage, steps in (("sft", 12), ("rl_general", 15), ("rl_joint", 15)):
      for i in range(steps):
        step += 1
        metrics = {"loss": 2.0 * math.exp(-i / 5) + 0.05 * rng.random(), "skipped": 0}
        for k, name in enumerate(_OBJECTIVES.get(stage, ())):
          metrics[f"rewards/{name}/mean"] = min(1.0, 0.2 + 0.05 * i + 0.1 * k)
        if stage == "rl_joint" and i == 7:
          metrics.update(loss=math.nan, skipped=1)
        writer.write(step, metrics, stage=stage)
      writer.write(step, metrics_to_scalars(_EVALS[stage]), stage=stage)


def test_report_from_the_jsonl(tmp_path):
  _write_run(tmp_path)
  path = report.write_report(tmp_path, title="tiny run")
  assert path == os.path.join(tmp_path, "report.md")
  text = open(path, encoding="utf-8").read()
  assert text.startswith("# tiny run\n")
  # The evaluations were read back from the JSONL, per stage, in run order.
  assert comparison_table(_EVALS) in text
  assert "| rl_joint | 28-42 | 1 |" in text  # 15 steps, one skipped
  assert "| sft | 1-12 | 0 |" in text
  for name in ("evaluation", "rewards", "losses"):
    assert f"(plots/{name}.png)" in text
    with Image.open(tmp_path / "plots" / f"{name}.png") as image:
      image.load()
      width, height = image.size
      assert width > 300 and height > 200
      # Not a blank canvas: many distinct colours were drawn.
      assert len(image.convert("RGB").getcolors(1 << 20)) > 20


def test_evaluations_from_records_take_the_last_of_each_stage():
  records = [
      {"step": 1, "stage": "sft", "loss": 1.0},
      {"step": 1, "stage": "sft", "eval/count/accuracy": 0.25, "eval/count/accuracy/n": 4},
      {"step": 2, "stage": "sft", "eval/count/accuracy": 0.5, "eval/count/accuracy/n": 4},
      {"step": 3, "stage": "rl", "eval/count/accuracy": None, "eval/count/accuracy/n": 4},
  ]
  evaluations = report.evaluations_from_records(records)
  assert list(evaluations) == ["sft", "rl"]
  assert evaluations["sft"] == {"count/accuracy": Metric(0.5, 4)}
  assert math.isnan(evaluations["rl"]["count/accuracy"].value)


def test_report_without_rewards_or_evaluations(tmp_path):
  records = [{"step": s, "stage": "sft", "loss": 1.0 / s} for s in range(1, 5)]
  text = open(report.write_report(tmp_path, records=records), encoding="utf-8").read()
  assert "## Losses" in text and "## Evaluation" not in text and "## Reward" not in text
  assert not os.path.exists(tmp_path / "plots" / "rewards.png")


@pytest.mark.parametrize("records", [[]])
def test_empty_run_gives_a_title_only_report(tmp_path, records):
  text = open(report.write_report(tmp_path, records=records), encoding="utf-8").read()
  assert text.strip() == "# cosmojax training report"
