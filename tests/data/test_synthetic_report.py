"""The report command prints the suite's tasks and writes one PNG per task."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from cosmojax.data import synthetic


def test_report_command_writes_pngs(tmp_path):
  out = tmp_path / "report"
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run(
      [sys.executable, "-m", "cosmojax.data.synthetic_report", "--out", str(out),
       "--per_task", "6", "--image_size", "56"],
      cwd=root, capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHONPATH": root})
  assert result.returncode == 0, result.stderr
  for task in synthetic.TASK_NAMES:
    assert task in result.stdout
    card = np.asarray(Image.open(out / f"{task}.png"))
    assert card.ndim == 3 and card.shape[0] > 56 and (card < 128).any()
  for kind in ("typographic", "query_relevant_image", "split_intent"):
    assert (out / f"augment_{kind}.png").exists()
  assert (out / "report.txt").read_text().strip() == result.stdout.strip()
