"""End-to-end tests of the experiment runner on a shrunken smoke config."""

import json
import logging

import numpy as np
import pytest

from configs import cosmo_tiny
from cosmojax.experiment import components, experiment_spec, run


def _config(workdir):
  c = cosmo_tiny.get_config("smoke")
  c.workdir = str(workdir)
  # The tests see 8 fake devices: 4 prompts per RL step split over fsdp=4, heads over tensor=2.
  c.mesh = dict(data=1, fsdp=4, tensor=2)
  for stage in ("rl_general", "rl_joint"):
    c.stages[stage].steps = 3
    c.stages[stage].learner.loss.kl_coef = 0.01  # a reference policy, restored on resume
  # A frozen vision tower in stage 1 (its optimizer state is partitioned), restored on resume.
  c.stages.rl_general.optimizer.frozen = ("^visual/",)
  return c


def _records(workdir):
  with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_unknown_config_keys_are_errors(tmp_path):
  config = _config(tmp_path)
  config.stages.sft.optimizer.learning_rte = 0.1
  with pytest.raises(ValueError, match=r"stages.sft.optimizer: unknown keys \['learning_rte'\]"):
    experiment_spec(config)
  config = _config(tmp_path)
  config.stages.rl_joint.learner.loss.eps = 0.3
  with pytest.raises(ValueError, match=r"stages.rl_joint.learner.loss: unknown keys \['eps'\]"):
    experiment_spec(config)
  config = _config(tmp_path)
  config.stage_order = ("sft", "rl_generl")
  with pytest.raises(ValueError, match="stage_order names \\['rl_generl'\\]"):
    experiment_spec(config)


@pytest.mark.slow
def test_resume_after_a_stop_reproduces_the_uninterrupted_run(tmp_path):
  whole = run(_config(tmp_path / "whole"))
  # Stop in the middle of rl_general (steps 4-6), one step after its checkpoint at step 4:
  # the resumed run restores step 4 and replays step 5 with the same data and keys.
  stopped = _config(tmp_path / "stopped")
  assert run(stopped, stop_after_step=5) == {"sft": whole["sft"]}
  resumed = run(stopped)
  assert resumed.keys() == whole.keys() == {"sft", "rl_general", "rl_joint"}
  for stage in whole:
    assert {k: m.value for k, m in resumed[stage].items()} == pytest.approx(
        {k: m.value for k, m in whole[stage].items()})
  a, b = _records(tmp_path / "whole"), _records(tmp_path / "stopped")
  assert [(r["step"], r["stage"]) for r in a] == [(r["step"], r["stage"]) for r in b]
  mismatches = []
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys()
    for key in ra:
      same = (np.isclose(rb[key], ra[key], rtol=1e-5, atol=1e-7) if isinstance(ra[key], float)
              else rb[key] == ra[key])
      if not same:
        mismatches.append((ra["step"], key, ra[key], rb[key]))
  assert not mismatches, mismatches
  assert (tmp_path / "stopped" / "report.md").exists()


@pytest.mark.slow
def test_a_non_finite_step_is_skipped_logged_and_training_goes_on(tmp_path, monkeypatch,
                                                                   caplog):
  original = components.stage_batches

  def poisoned(c, stage, seed):  # the second SFT batch carries NaN pixels
    seen = []

    def poison(batch_and_meta):
      batch, meta = batch_and_meta
      seen.append(None)
      if len(seen) == 2:
        batch = batch.replace(pixel_values=np.full_like(batch.pixel_values, np.nan))
      return batch, meta

    return original(c, stage, seed).map(poison)

  monkeypatch.setattr(components, "stage_batches", poisoned)
  config = _config(tmp_path)
  config.stage_order = ("sft",)
  with caplog.at_level(logging.WARNING):
    run(config)
  sft = [r for r in _records(tmp_path) if r["stage"] == "sft" and "skipped" in r]
  assert [r["skipped"] for r in sft] == [0, 1, 0]
  assert "step 2 (sft): non-finite loss or gradient" in caplog.text
  assert np.isfinite(sft[-1]["loss"])
