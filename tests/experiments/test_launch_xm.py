"""experiments/launch_xm.py: the per-host command lines and environments (no xmanager), the
command line as train.py's config flags read it, and the XManager jobs when xmanager is
installed (the `xm` extra; skipped otherwise)."""

from __future__ import annotations

import sys

import pytest
from absl import flags
from ml_collections import config_flags

from experiments import launch_xm

CONFIG = "configs/cosmo_r1_7b.py:model=/ckpt/qwen,data=/data/mix"


def test_train_command_formats_overrides():
  command = launch_xm.train_command(
      CONFIG, {"stages.sft.steps": 10, "resume": False, "data.prompt_length_buckets": (256,),
               "workdir": "/runs/a"})
  assert command == (
      "python", "experiments/train.py", f"--config={CONFIG}", "--config.stages.sft.steps=10",
      "--config.resume=false", "--config.data.prompt_length_buckets=(256,)",
      "--config.workdir=/runs/a")
  with pytest.raises(ValueError, match="expected configs/<name>.py"):
    launch_xm.train_command("configs/cosmo_r1_7b")


def test_command_line_is_what_train_py_reads(monkeypatch):
  """The overrides reach the config through ml_collections' config flags, as in train.py."""
  command = launch_xm.train_command(
      CONFIG, launch_xm.parse_overrides(["stages.sft.steps=10", "resume=false",
                                         "data.prompt_length_buckets=(256, 512)"]))
  argv = ["train.py", *command[2:]]
  monkeypatch.setattr(sys, "argv", argv)  # config flags read their overrides from sys.argv
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  values(argv)
  config = values.config
  assert config.stages.sft.steps == 10 and config.resume is False
  assert tuple(config.data.prompt_length_buckets) == (256, 512)
  assert config.model.path == "/ckpt/qwen"
  assert config.stages.rl_joint.steps == 500  # not overridden


def test_parse_overrides_needs_key_and_value():
  assert launch_xm.parse_overrides(["a.b=1", "c=x=y"]) == {"a.b": "1", "c": "x=y"}
  with pytest.raises(ValueError, match="expected key=value"):
    launch_xm.parse_overrides(["steps"])


def test_tpu_slice_runs_the_same_command_on_every_host():
  jobs = launch_xm.host_jobs("tpu", CONFIG, {"seed": 1}, tpu_slice="v5p:4x4x2")
  assert len(jobs) == 8  # 32 chips, 4 per host
  assert {job.command for job in jobs} == {launch_xm.train_command(CONFIG, {"seed": 1})}
  assert all(job.env == {} for job in jobs)  # jax.distributed finds the TPU hosts itself
  assert len(launch_xm.host_jobs("tpu", CONFIG, tpu_slice="v5p:2x2x1")) == 1
  for bad in ("v6x:2x2x2", "v5p:4x4", "v5p:axbxc"):
    with pytest.raises(ValueError, match="TPU slice"):
      launch_xm.host_jobs("tpu", CONFIG, tpu_slice=bad)


def test_gpu_nodes_get_their_process_ids():
  (single,) = launch_xm.host_jobs("gpu", CONFIG, num_nodes=1)
  assert single.env == {}
  jobs = launch_xm.host_jobs("gpu", CONFIG, num_nodes=3, coordinator="node0.svc")
  assert [j.env["COSMOJAX_PROCESS_ID"] for j in jobs] == ["0", "1", "2"]
  assert {j.env["COSMOJAX_COORDINATOR"] for j in jobs} == {"node0.svc:8476"}
  assert {j.env["COSMOJAX_NUM_PROCESSES"] for j in jobs} == {"3"}
  assert jobs[1].shell().startswith(
      "COSMOJAX_COORDINATOR=node0.svc:8476 COSMOJAX_NUM_PROCESSES=3 COSMOJAX_PROCESS_ID=1 "
      "python experiments/train.py")
  with pytest.raises(ValueError, match="coordinator address"):
    launch_xm.host_jobs("gpu", CONFIG, num_nodes=2)
  with pytest.raises(ValueError, match="platform 'cpu'"):
    launch_xm.host_jobs("cpu", CONFIG)


def test_environment_matches_initialize_distributed(monkeypatch):
  """The variables are the ones `initialize_distributed` reads (it calls jax.distributed)."""
  from cosmojax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top

  calls = []
  monkeypatch.setattr(mesh_lib.jax.distributed, "initialize",
                      lambda **kwargs: calls.append(kwargs))
  monkeypatch.setattr(mesh_lib.jax, "process_index", lambda: 1)
  job = launch_xm.host_jobs("gpu", CONFIG, num_nodes=2, coordinator="10.0.0.2:1234")[1]
  for key, value in job.env.items():
    monkeypatch.setenv(key, value)
  assert mesh_lib.initialize_distributed()
  assert calls == [{"coordinator_address": "10.0.0.2:1234", "num_processes": 2,
                    "process_id": 1}]


def test_xm_jobs_request_the_slice_or_the_nodes():
  xm = pytest.importorskip("xmanager.xm", reason="xmanager is not installed (the xm extra)")
  tpu = launch_xm.host_jobs("tpu", CONFIG, tpu_slice="v5p:4x4x2")
  ((name, requirements, env),) = launch_xm.xm_jobs(tpu, "tpu", "v5p:4x4x2")
  assert name == "train" and env == {}
  assert requirements.accelerator == xm.ResourceType.TPU_V5P
  assert requirements.topology == xm.Topology("4x4x2") and requirements.replicas == 8
  gpu = launch_xm.host_jobs("gpu", CONFIG, num_nodes=2, coordinator="node0")
  specs = launch_xm.xm_jobs(gpu, "gpu")
  assert [s[0] for s in specs] == ["node0", "node1"]
  for (_, requirements, env), job in zip(specs, gpu):
    assert requirements.accelerator == xm.ResourceType.H100
    assert requirements.task_requirements[xm.ResourceType.H100] == 8
    assert env == job.env
