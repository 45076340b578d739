"""The end-of-run report: `report.md` with PNG plots, from the run's metrics JSONL.

    write_report(workdir)            # reads workdir/metrics.jsonl, writes workdir/report.md

Sections (each only when the run has its data):

- a summary per stage: steps, skipped (non-finite) steps, final loss and rewards;
- the evaluation table (`comparison_table`) and a grouped bar chart of it, one bar per stage;
  evaluations are read from the records holding "eval/..." scalars (`metrics_to_scalars`),
  the last one of each stage, or passed in;
- reward per objective over steps, one panel per stage (records' "rewards/<name>/mean",
  as `rewards.reward_metrics` names them);
- loss curves, one panel per stage (every training key whose last part contains "loss").

Plots use matplotlib's object API on the Agg canvas (no pyplot, no global backend change).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cosmojax.eval.suite_metrics import (Metric, comparison_table, higher_is_better,
                                         metrics_from_scalars)
from cosmojax.eval.writers import METRICS_FILE, read_jsonl

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
EVAL_PREFIX = "eval"
REWARD_KEY = re.compile(r"^rewards/([^/]+)/mean$")
_PANEL_INCHES = (5.0, 3.6)


def _stages(records: Sequence[Mapping[str, Any]]) -> list[str]:
  return list(dict.fromkeys(r.get("stage", "") for r in records))


def _is_eval(record: Mapping[str, Any]) -> bool:
  return any(k.startswith(f"{EVAL_PREFIX}/") for k in record)


def evaluations_from_records(records: Sequence[Mapping[str, Any]]
                             ) -> dict[str, dict[str, Metric]]:
  """Per stage (in run order), the metrics of its last evaluation record."""
  out: dict[str, dict[str, Metric]] = {}
  for record in records:
    if _is_eval(record):
      out[record.get("stage", "")] = metrics_from_scalars(record, EVAL_PREFIX)
  return out


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of `key` over training records; null (non-finite) values are NaN."""
  rows = [(r["step"], np.nan if r[key] is None else r[key]) for r in records
          if key in r and not _is_eval(r)]
  steps, values = zip(*rows) if rows else ((), ())
  return np.asarray(steps, float), np.asarray(values, float)


def _save(figure: Figure, path: str) -> None:
  FigureCanvasAgg(figure)
  figure.savefig(path, dpi=110)


def _stage_panels(records: Sequence[Mapping[str, Any]], series: Mapping[str, Mapping[str, str]],
                  ylabel: str, path: str) -> bool:
  """One panel per stage with a line per (label -> key) of series[stage], and the skipped
  (non-finite) steps marked; False if there is nothing to plot."""
  stages = [s for s in _stages(records) if series.get(s)]
  if not stages:
    return False
  width, height = _PANEL_INCHES
  figure = Figure(figsize=(width * len(stages), height), layout="constrained")
  axes = figure.subplots(1, len(stages), squeeze=False)[0]
  for ax, stage in zip(axes, stages):
    stage_records = [r for r in records if r.get("stage", "") == stage]
    for label, key in series[stage].items():
      steps, values = _series(stage_records, key)
      ax.plot(steps, values, label=label, marker="." if len(steps) < 30 else None)
    skipped_steps, skipped = _series(stage_records, "skipped")
    for i, step in enumerate(skipped_steps[skipped > 0]):
      ax.axvline(step, color="red", alpha=0.4, linestyle="--",
                 label="skipped step" if i == 0 else None)
    ax.set_title(stage or "(no stage)")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  _save(figure, path)
  return True


def _reward_series(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
  out: dict[str, dict[str, str]] = {}
  for r in records:
    if not _is_eval(r):
      for key in r:
        match = REWARD_KEY.match(key)
        if match:
          out.setdefault(r.get("stage", ""), {})[match.group(1)] = key
  return out


def _loss_series(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
  out: dict[str, dict[str, str]] = {}
  for r in records:
    if not _is_eval(r):
      for key in r:
        if "loss" in key.rsplit("/", 1)[-1]:
          out.setdefault(r.get("stage", ""), {})[key] = key
  return out


def plot_evaluations(evaluations: Mapping[str, Mapping[str, Metric]], path: str) -> bool:
  """A horizontal grouped bar chart: a group per metric, a bar per stage; False if empty."""
  names = list(dict.fromkeys(n for metrics in evaluations.values() for n in metrics))
  if not names:
    return False
  stages = list(evaluations)
  height = 0.8 / len(stages)
  figure = Figure(figsize=(8.0, 1.0 + 0.28 * len(names) * max(len(stages), 2)),
                  layout="constrained")
  ax = figure.subplots()
  rows = np.arange(len(names))
  for i, stage in enumerate(stages):
    values = [evaluations[stage][n].value if n in evaluations[stage] else np.nan for n in names]
    bars = ax.barh(rows + (i - (len(stages) - 1) / 2) * height, values, height, label=stage)
    ax.bar_label(bars, fmt="%.2f", fontsize="x-small", padding=2)
  arrows = {True: " ↑", False: " ↓", None: ""}
  ax.set_yticks(rows, [n + arrows[higher_is_better(n)] for n in names])
  ax.invert_yaxis()
  ax.set_xlim(0, 1.12)
  ax.set_xlabel("rate (↑ higher is better, ↓ lower is better)")
  ax.grid(axis="x", alpha=0.3)
  figure.legend(loc="outside upper center", ncols=len(stages), fontsize="small")
  _save(figure, path)
  return True


def _fmt(value: Any) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return f"{value:.4g}"


def _summary(records: Sequence[Mapping[str, Any]]) -> str:
  """A markdown table: per stage, steps, skipped steps, final loss and final mean rewards."""
  lines = ["| stage | steps | skipped steps | final loss | final rewards |",
           "|---|--:|--:|--:|---|"]
  for stage in _stages(records):
    train = [r for r in records if r.get("stage", "") == stage and not _is_eval(r)]
    if not train:
      continue
    steps = [r["step"] for r in train]
    skipped = sum(int(r.get("skipped") or 0) for r in train)
    last = train[-1]
    losses = [k for k in last if k.rsplit("/", 1)[-1] == "loss"] or [
        k for k in last if "loss" in k.rsplit("/", 1)[-1]]
    rewards = ", ".join(f"{m.group(1)} {_fmt(last[k])}" for k in last
                        if (m := REWARD_KEY.match(k)))
    lines.append(f"| {stage or '(no stage)'} | {min(steps)}-{max(steps)} | {skipped} | "
                 f"{_fmt(last[losses[0]]) if losses else '-'} | {rewards or '-'} |")
  return "\n".join(lines)


def write_report(run_dir: str | os.PathLike, *,
                 records: Sequence[Mapping[str, Any]] | None = None,
                 evaluations: Mapping[str, Mapping[str, Metric]] | None = None,
                 title: str = "cosmojax training report") -> str:
  """Writes `run_dir`/report.md and its plots under `run_dir`/plots; returns the report path.

  Args:
    run_dir: the run's output directory.
    records: the metric records; default: read from `run_dir`/metrics.jsonl.
    evaluations: stage -> suite metrics; default: from the records' "eval/..." scalars.
    title: the report's heading.
  """
  run_dir = os.fspath(run_dir)
  if records is None:
    records = read_jsonl(os.path.join(run_dir, METRICS_FILE))
  if evaluations is None:
    evaluations = evaluations_from_records(records)
  plots = os.path.join(run_dir, PLOTS_DIR)
  os.makedirs(plots, exist_ok=True)
  sections = [f"# {title}", ""]
  if any(not _is_eval(r) for r in records):
    sections += ["## Summary", "", _summary(records), ""]
  if evaluations:
    sections += ["## Evaluation", "", comparison_table(evaluations), ""]
    if plot_evaluations(evaluations, os.path.join(plots, "evaluation.png")):
      sections += [f"![evaluation per stage]({PLOTS_DIR}/evaluation.png)", ""]
  if _stage_panels(records, _reward_series(records), "mean reward",
                   os.path.join(plots, "rewards.png")):
    sections += ["## Reward per objective", "", f"![rewards]({PLOTS_DIR}/rewards.png)", ""]
  if _stage_panels(records, _loss_series(records), "loss", os.path.join(plots, "losses.png")):
    sections += ["## Losses", "", f"![losses]({PLOTS_DIR}/losses.png)", ""]
  path = os.path.join(run_dir, REPORT_FILE)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(sections))
  return path
