"""Executes the Colab notebooks (colab/*.ipynb) in a fresh kernel and checks their outputs.

How the kernel is started (robust on a fresh clone after `make test`, nothing installed by
hand): a kernelspec written to tmp_path runs `sys.executable -m ipykernel_launcher`, so the
notebook runs in the interpreter of this test process (the venv), whatever kernelspecs the
machine has. The kernel's environment puts the repository root first on PYTHONPATH, so that
the notebooks import this checkout's cosmojax: pytest.ini's `pythonpath = .` only applies to
the pytest process, and an installed cosmojax (the venv's editable install, which may point at
another checkout) comes after PYTHONPATH. The notebooks' setup cell prints where cosmojax came
from, and the tests check it. The kernel drops conftest.py's 8 fake devices (the notebooks run
on one device, as a user's would), uses matplotlib's inline backend (plots become image
outputs even where MPLBACKEND is set), and starts in colab/, as when a notebook is opened from
a checkout.

The notebooks are committed without outputs (checked here); each test runs one fresh and
fails on any cell error (nbclient raises `CellExecutionError` with the traceback). Cells whose
outputs are checked carry a metadata tag.
"""

from __future__ import annotations

import html
import json
import math
import os
import pathlib
import re
import sys

import nbclient
import nbformat
import numpy as np
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

REPO = pathlib.Path(__file__).resolve().parents[1]
COLAB = REPO / "colab"
NOTEBOOKS = ("quickstart.ipynb", "train_tiny.ipynb", "rewards_playground.ipynb")
KERNEL_NAME = "cosmojax-notebook-test"
# What cosmojax's CoSMo-RL recipe scores (rewards/recipes.py): four objectives, sorted by name.
COSMO_OBJECTIVES = ["format", "helpful", "task_aware", "visual_focus"]


# --- Running a notebook ------------------------------------------------------------------------


def _kernel_env(extra: dict[str, str]) -> dict[str, str]:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
  env.update(extra)
  return env


def execute(name: str, tmp_path: pathlib.Path, *, timeout: int, env: dict[str, str] | None = None):
  """Runs colab/`name` in a fresh kernel of this interpreter; returns the executed notebook."""
  kernels = tmp_path / "kernels"
  (kernels / KERNEL_NAME).mkdir(parents=True)
  (kernels / KERNEL_NAME / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "cosmojax notebook test", "language": "python"}))
  km = AsyncKernelManager(kernel_name=KERNEL_NAME,
                          kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
  nb = nbformat.read(COLAB / name, as_version=4)
  client = nbclient.NotebookClient(nb, km=km, timeout=timeout, startup_timeout=120,
                                   resources={"metadata": {"path": str(COLAB)}})
  client.execute(env=_kernel_env(env or {}))
  return nb


def cell(nb, tag: str):
  cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
  assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
  return cells[0]


def outputs(c, mime: str) -> list[str]:
  """The `mime` data of a cell's rich outputs ("stream" for its printed text)."""
  if mime == "stream":
    return [o.text for o in c.outputs if o.output_type == "stream" and o.name == "stdout"]
  return [o.data[mime] for o in c.outputs
          if o.output_type in ("display_data", "execute_result") and mime in o.data]


def tables(c) -> list[list[dict[str, str]]]:
  """The markdown tables a cell displayed, as rows of {header: cell text}."""
  found = []
  for text in outputs(c, "text/markdown"):
    # A table is a block of consecutive "|" lines: header, separator, body.
    for block in re.findall(r"(?m)(?:^\|.*\n?)+", text):
      rows = [[html.unescape(x.strip().replace("\\|", "|"))
               for x in re.split(r"(?<!\\)\|", line)[1:-1]] for line in block.splitlines()]
      found.append([dict(zip(rows[0], row)) for row in rows[2:]])
  return found


def number(text: str) -> float:
  return math.nan if text == "n/a" else float(text)


def check_setup(nb) -> None:
  """The setup cell imported cosmojax from this checkout."""
  assert f"from {REPO}\n" in "".join(outputs(cell(nb, "setup"), "stream"))


# --- Committed form -----------------------------------------------------------------------------


def test_every_notebook_is_tested():
  assert sorted(p.name for p in COLAB.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
  nb = nbformat.read(COLAB / name, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code), (
      f"colab/{name} has outputs: clear them before committing (see colab/README.md).")
  assert nb.metadata.kernelspec.name == "python3"  # what Colab starts


# --- quickstart ---------------------------------------------------------------------------------


def grpo_reference(rewards: np.ndarray) -> np.ndarray:
  """(r - mean) / (std + 1e-6) over the present (non-NaN) values of one group, ddof 1; 0 for
  a group without variance (cosmojax.rl.advantages' definition), in NumPy."""
  present = ~np.isnan(rewards)
  out = np.full(rewards.shape, np.nan)
  values = rewards[present]
  if np.ptp(values) == 0:
    out[present] = 0.0
  else:
    out[present] = (values - values.mean()) / (values.std(ddof=1) + 1e-6)
  return out


@pytest.mark.slow
def test_quickstart(tmp_path):
  nb = execute("quickstart.ipynb", tmp_path, timeout=600)
  check_setup(nb)
  assert outputs(cell(nb, "images"), "image/png")
  assert len(tables(cell(nb, "completions"))[0]) == 16  # 4 prompts x G = 4

  (rewards,) = tables(cell(nb, "reward-matrix"))
  assert list(rewards[0]) == ["n", "task", *COSMO_OBJECTIVES]
  tasks = [row["task"] for row in rewards]
  assert tasks == [t for t in ("count", "instruction", "harmful_text", "benign_probe")
                   for _ in range(4)]
  # CoSMo-RL's routing: unsafe requests get format and task_aware only, instruction tasks no
  # visual_focus, the others all four ("·" = not routed).
  not_routed = {"harmful_text": {"helpful", "visual_focus"}, "instruction": {"visual_focus"}}
  for row in rewards:
    for name in COSMO_OBJECTIVES:
      if name in not_routed.get(row["task"], ()):
        assert row[name] == "·", row
      else:
        assert row[name] == "n/a" or 0.0 <= float(row[name]) <= 1.0, row

  # Advantages: GRPO per objective within each group of 4, recomputed from the displayed
  # (2-decimal) rewards.
  (advantages,) = tables(cell(nb, "advantages"))
  for name in COSMO_OBJECTIVES:
    for g in range(4):
      rows = range(4 * g, 4 * g + 4)
      if rewards[4 * g][name] == "·":
        assert all(advantages[n][name] == "·" for n in rows)
        continue
      r = np.array([number(rewards[n][name]) for n in rows])
      a = np.array([number(advantages[n][name]) for n in rows])
      np.testing.assert_allclose(a, grpo_reference(r), atol=0.06, err_msg=f"{name}, group {g}")

  (diagnostics,) = tables(cell(nb, "loss-diagnostics"))
  values = {row["diagnostic"]: row["value"] for row in diagnostics}
  assert {"loss", "pg_loss", "drift_loss", "clipfrac", "approx_kl", "grad_norm"} <= set(values)
  assert float(values["optimizer_steps"]) == 2  # one epoch of two minibatches
  assert float(values["skipped"]) == 0
  assert all(math.isfinite(float(values[k])) for k in ("loss", "pg_loss", "grad_norm"))


# --- train_tiny ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_tiny(tmp_path):
  workdir = tmp_path / "run"
  nb = execute("train_tiny.ipynb", tmp_path, timeout=900,
               env={"COSMOJAX_NOTEBOOK_WORKDIR": str(workdir)})
  check_setup(nb)
  from configs.cosmo_tiny import get_config  # pylint: disable=g-import-not-at-top

  config = get_config("smoke")

  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if not any(k.startswith("eval/") for k in r)]
  evals = [r for r in records if any(k.startswith("eval/") for k in r)]
  expected_stages = [name for name in config.stage_order
                     for _ in range(config.stages[name].steps)]
  assert [r["stage"] for r in train] == expected_stages
  assert [r["step"] for r in train] == list(range(1, len(expected_stages) + 1))
  assert [r["stage"] for r in evals] == list(config.stage_order)
  # A step's batch may hold no sample an objective applies to (the smoke config samples only a
  # few prompts per step): then it logs no mean and a NaN fraction of 1 (or none if unrouted).
  rl_steps = [r for r in train if r["stage"] != "sft"]
  for r in rl_steps:
    for name in COSMO_OBJECTIVES:
      assert f"rewards/{name}/failures" in r, (r["step"], name)
      nan_fraction = r.get(f"rewards/{name}/nan_fraction", 1.0)
      assert (f"rewards/{name}/mean" in r) == (nan_fraction < 1.0), (r["step"], name)
  for name in COSMO_OBJECTIVES:  # yet every objective is scored somewhere in the run
    assert any(f"rewards/{name}/mean" in r for r in rl_steps), name
  assert "## Evaluation" in (workdir / "report.md").read_text()

  assert outputs(cell(nb, "plot"), "image/png")
  (evaluation,) = tables(cell(nb, "evaluation"))
  assert list(evaluation[0])[2:5] == list(config.stage_order)
  assert "capability/accuracy" in [row["metric"] for row in evaluation]
  assert len(outputs(cell(nb, "report"), "image/png")) >= 2  # evaluation, rewards, losses


# --- rewards_playground -------------------------------------------------------------------------


def column(table: list[dict[str, str]], name: str) -> list[float]:
  return [number(row[name]) for row in table]


def test_rewards_playground(tmp_path):
  nb = execute("rewards_playground.ipynb", tmp_path, timeout=300)
  check_setup(nb)
  nan = math.nan

  (parsed,) = tables(cell(nb, "parse"))
  assert [row["ok"] for row in parsed] == ["True", "True", "False", "False", "False", "False"]
  assert parsed[3]["answer"] == "None"  # an answer nested in the description is not exposed
  assert parsed[5]["final_answer"] == "There are 3 red circles."  # plain text is its own answer

  # Hand-derived from the terms' definitions (the completions are in the notebook): e.g.
  # "thin perception" describes 1 of the 2 visual key facts (coverage 0.5 -> level 0.5), its
  # reasoning never states "3 red circles" (textual_key 0); "inconsistent" answers 3 after
  # describing 2 (consistency 0); "no format" has no fields (visual_key 0, consistency 0) but
  # its plain text is a correct answer that covers one of two facts (visual_focus 0.5).
  (capability,) = tables(cell(nb, "capability"))
  expected = {
      "format": [1, 1, 1, 1, 0, 1],
      "accuracy": [1, 1, 1, 0, 1, 1],
      "visual_key": [1, 0.5, 0.5, 1, 0, 1],
      "textual_key": [1, 0, 0, 0, 0, 1],
      "visual_focus": [1, 0.5, 0.5, 1, 0.5, 1],
      "consistency": [1, 1, 0, 0, 0, 1],
  }
  for name, values in expected.items():
    assert column(capability, name) == values, name
  repetition = column(capability, "repetition")
  assert repetition[5] < repetition[0] <= 0 and repetition[1] == 0

  (safety,) = tables(cell(nb, "safety"))
  np.testing.assert_array_equal(column(safety, "refusal"), [1, 0, 0, 0, 1])
  np.testing.assert_array_equal(column(safety, "safety"), [1, 0, 0, 1, 0])
  np.testing.assert_array_equal(column(safety, "helpful"), [nan, nan, nan, 1, 0])
  np.testing.assert_array_equal(column(safety, "over_refusal"), [nan, nan, nan, 0, -1])

  (value,) = tables(cell(nb, "value"))
  np.testing.assert_array_equal(column(value, "value"), [1, 0, nan, nan, nan])
  # "the answer is square": max_words:4 holds, uppercase and start_with:answer do not.
  np.testing.assert_allclose(column(value, "instruction_following"),
                             [nan, nan, 1, 1 / 3, 0], atol=0.005)

  # The long answer has 7 + 5 + 40 * 5 + 1 = 213 words: 1 - 0.5 * (213 - 50) / 350 = 0.767.
  (efficiency,) = tables(cell(nb, "efficiency"))
  np.testing.assert_allclose(column(efficiency, "efficiency"), [1, 0.77, 0], atol=0.005)

  recipes = tables(cell(nb, "recipes"))
  assert [list(t[0])[2:] for t in recipes] == [
      COSMO_OBJECTIVES,
      ["accuracy", "consistency", "format", "repetition", "textual_key", "visual_key"],
      ["efficiency", "knowledge", "safety", "value"]]

  (custom,) = tables(cell(nb, "custom"))
  np.testing.assert_array_equal(column(custom, "no_hedging"), [0, -0.5, 0, nan, nan])
  (custom_recipe,) = tables(cell(nb, "custom-recipe"))
  assert list(custom_recipe[0])[2:] == sorted(COSMO_OBJECTIVES + ["no_hedging"])
  assert [row["no_hedging"] for row in custom_recipe] == ["0.00", "-1.00", "0.00", "n/a", "·",
                                                          "·"]
  (batched,) = tables(cell(nb, "batched"))
  np.testing.assert_array_equal(column(batched, "majority_vote"), [1, 1, 0, 0, 1])
  errors = "".join(outputs(cell(nb, "errors"), "stream"))
  assert "unknown reward function 'no_hedgin'" in errors and "'penality'" in errors
