r"""Launches `experiments/train.py` with XManager: on a TPU v5p slice or on H100 GPU nodes.

    # CoSMo-RL on a v5p-64 slice (4x4x2: 32 chips, 8 hosts of 4 chips): a process per host
    xmanager launch experiments/launch_xm.py -- --platform=tpu --slice=v5p:4x4x2 \
        --config=configs/cosmo_r1_7b.py:model=/ckpt/Qwen2.5-VL-7B-Instruct,data=/data/cosmo \
        --set=stages.rl_joint.steps=800
    # the same on 2 nodes of 8 H100
    xmanager launch experiments/launch_xm.py -- --platform=gpu --num_nodes=2 --config=...
    # print the per-host commands without launching (needs no xmanager)
    python experiments/launch_xm.py --platform=tpu --slice=v5p:4x4x2 --config=... --dry_run

Every host runs the same command,

    python experiments/train.py --config=<config>[:<arg>] --config.<key>=<value> ...

and `experiments/train.py` starts `jax.distributed` through
`cosmojax.parallel.initialize_distributed` before it builds the mesh:
- TPU: one process per host of the slice. In XManager that is one job holding the slice
  (`tpu_v5p=Topology("4x4x2")`) with one replica per host: the slice is a single resource, so
  separate jobs would each request a slice. The TPU runtime sets TPU_WORKER_HOSTNAMES and the
  worker id on each host, from which `jax.distributed.initialize()` finds the coordinator,
  the process count and its own id; nothing else is passed.
- GPU: one job per node, 8 H100 each. The jobs get COSMOJAX_COORDINATOR (the first node's
  address, `--coordinator`), COSMOJAX_NUM_PROCESSES and COSMOJAX_PROCESS_ID, which
  `initialize_distributed` passes to `jax.distributed.initialize`.

The command lines and per-host environments are plain functions (`host_jobs`), tested
without xmanager; xmanager (the `xm` extra: `pip install -e .[xm]`) is imported only to
launch. Open-source XManager's executors are GKE (`--executor=kubernetes`) and Vertex AI;
Vertex AI runs no v5p slices, and XManager's GKE executor does not set up multi-host TPU
node pools itself: the cluster must provide the v5p node pool.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
from typing import Any, Mapping, Sequence

from absl import app, flags

CHIPS_PER_HOST = {"v5p": 4, "gpu": 8}  # a v5p host holds 4 chips; an H100 node 8 GPUs
TRAIN_SCRIPT = "experiments/train.py"
DEFAULT_COORDINATOR_PORT = 8476


@dataclasses.dataclass(frozen=True)
class HostJob:
  """One process of a multi-host run: its name, command line and environment."""

  name: str
  command: tuple[str, ...]
  env: Mapping[str, str]

  def shell(self) -> str:
    """The command as one shell line, environment first."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
    return (env + " " if env else "") + shlex.join(self.command)


def flag_value(value: Any) -> str:
  """A config override value as `--config.key=` parses it (ml_collections config flags)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return "(" + ", ".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
  """["stages.sft.steps=10", ...] -> {"stages.sft.steps": "10", ...}."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise ValueError(f"--set {item!r}: expected key=value (e.g. stages.sft.steps=10)")
    out[key.strip()] = value
  return out


def train_command(config: str, overrides: Mapping[str, Any] | None = None, *,
                  python: str = "python") -> tuple[str, ...]:
  """`python experiments/train.py --config=<config> --config.<key>=<value> ...`.

  Args:
    config: the config file and its argument, `configs/<name>.py[:<arg>]`.
    overrides: config keys (dotted) and values; the order is kept.
    python: the interpreter on the hosts.
  """
  path = config.split(":", 1)[0]
  if not path.endswith(".py"):
    raise ValueError(f"config {config!r}: expected configs/<name>.py[:<arg>]")
  return (python, TRAIN_SCRIPT, f"--config={config}",
          *(f"--config.{key}={flag_value(value)}" for key, value in (overrides or {}).items()))


def tpu_hosts(tpu_slice: str) -> int:
  """Hosts of a TPU slice "<generation>:AxBxC" (v5p:4x4x2 = 32 chips = v5p-64: 8 hosts)."""
  generation, _, topology = tpu_slice.partition(":")
  if generation not in CHIPS_PER_HOST or generation == "gpu":
    raise ValueError(f"TPU slice {tpu_slice!r}: unknown generation {generation!r}; known: "
                     f"{[g for g in CHIPS_PER_HOST if g != 'gpu']}")
  try:
    dims = [int(d) for d in topology.lower().split("x")]
  except ValueError:
    dims = []
  if len(dims) != 3 or min(dims) < 1:
    raise ValueError(f"TPU slice {tpu_slice!r}: expected three positive sizes, e.g. v5p:4x4x2")
  return max(math.prod(dims) // CHIPS_PER_HOST[generation], 1)


def host_jobs(platform: str, config: str, overrides: Mapping[str, Any] | None = None, *,
              tpu_slice: str = "", num_nodes: int = 1, coordinator: str = "",
              python: str = "python") -> list[HostJob]:
  """The jobs of a run, one per host (see the module docstring).

  Args:
    platform: "tpu" (the hosts of `tpu_slice`) or "gpu" (`num_nodes` nodes of 8 GPUs).
    config, overrides, python: as in `train_command`.
    tpu_slice: TPU only: generation and topology, e.g. "v5p:4x4x2".
    num_nodes: GPU only: the number of nodes.
    coordinator: GPU only, with more than one node: "host[:port]" of the first job.
  """
  command = train_command(config, overrides, python=python)
  if platform == "tpu":
    return [HostJob(f"host{i}", command, {}) for i in range(tpu_hosts(tpu_slice))]
  if platform != "gpu":
    raise ValueError(f"platform {platform!r}; known: 'tpu', 'gpu'")
  if num_nodes < 1:
    raise ValueError(f"num_nodes must be >= 1; got {num_nodes}")
  if num_nodes == 1:
    return [HostJob("node0", command, {})]
  if not coordinator:
    raise ValueError(f"{num_nodes} GPU nodes need the coordinator address of the first node "
                     "(--coordinator=host[:port])")
  if ":" not in coordinator:
    coordinator = f"{coordinator}:{DEFAULT_COORDINATOR_PORT}"
  return [HostJob(f"node{i}", command,
                  {"COSMOJAX_COORDINATOR": coordinator, "COSMOJAX_NUM_PROCESSES": str(num_nodes),
                   "COSMOJAX_PROCESS_ID": str(i)})
          for i in range(num_nodes)]


# -------------------------------------------------------------------------- XManager


def xm_jobs(jobs: Sequence[HostJob], platform: str, tpu_slice: str = ""
            ) -> list[tuple[str, Any, Mapping[str, str]]]:
  """(name, `xm.JobRequirements`, environment) of the XManager jobs of a run.

  TPU: one job for the whole slice, `tpu_<generation>=Topology(...)` with one replica (task)
  per host: a slice is one resource, so per-host jobs would each ask for a slice of their own.
  The replicas run the same command; the TPU runtime tells each its worker id.
  GPU: one job per node (8 H100 each), so that each gets its own COSMOJAX_PROCESS_ID.
  """
  from xmanager import xm  # pylint: disable=g-import-not-at-top  # launch-time dependency

  if platform == "tpu":
    generation, _, topology = tpu_slice.partition(":")
    requirements = xm.JobRequirements(**{f"tpu_{generation}": xm.Topology(topology)},
                                      replicas=len(jobs))
    return [("train", requirements, dict(jobs[0].env))]
  return [(job.name, xm.JobRequirements(h100=CHIPS_PER_HOST["gpu"]), dict(job.env))
          for job in jobs]


def launch(jobs: Sequence[HostJob], platform: str, tpu_slice: str, executor: str, image: str,
           title: str) -> None:
  """Packages the checkout as a container and adds the run's jobs to a new experiment."""
  from xmanager import xm  # pylint: disable=g-import-not-at-top  # launch-time dependency
  from xmanager import xm_local  # pylint: disable=g-import-not-at-top

  executor_cls = {"kubernetes": xm_local.Kubernetes, "vertex": xm_local.Vertex}[executor]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with xm_local.create_experiment(experiment_title=title) as experiment:
    [executable] = experiment.package([xm.python_container(
        executor_spec=executor_cls.Spec(), path=root, base_image=image,
        docker_instructions=[f"COPY {os.path.basename(root)}/ /cosmojax", "WORKDIR /cosmojax",
                             f"RUN pip install -c constraints.txt -e .[{platform}]"],
        entrypoint=xm.CommandList([shlex.join(jobs[0].command)]))])
    group = {name: xm.Job(executable=executable,
                          executor=executor_cls(requirements=requirements), env_vars=env)
             for name, requirements, env in xm_jobs(jobs, platform, tpu_slice)}
    experiment.add(xm.JobGroup(**group))


# -------------------------------------------------------------------------- command line

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags (defined when run as a script: importing defines none, so tests
  can import this module beside experiments/train.py, which also has --config)."""
  flags.DEFINE_string("config", None, "configs/<name>.py[:<arg>]")
  flags.DEFINE_multi_string("set", [], "Config override key=value (repeatable).")
  flags.DEFINE_enum("platform", "tpu", ["tpu", "gpu"], "TPU v5p slice or H100 nodes.")
  flags.DEFINE_string("slice", "v5p:4x4x2",
                      "TPU slice, generation:topology (v5p:4x4x2 is a v5p-64).")
  flags.DEFINE_integer("num_nodes", 1, "GPU nodes of 8 H100.")
  flags.DEFINE_string("coordinator", "", "GPU: host[:port] of the first node.")
  flags.DEFINE_enum("executor", "kubernetes", ["kubernetes", "vertex"],
                    "XManager executor (GKE or Vertex AI).")
  flags.DEFINE_string("image", "python:3.11", "Base container image.")
  flags.DEFINE_string("title", "cosmojax", "Experiment title.")
  flags.DEFINE_bool("dry_run", False, "Print the per-host commands; launch nothing.")
  flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  jobs = host_jobs(FLAGS.platform, FLAGS.config, parse_overrides(FLAGS.set),
                   tpu_slice=FLAGS.slice, num_nodes=FLAGS.num_nodes,
                   coordinator=FLAGS.coordinator)
  if FLAGS.dry_run:
    for job in jobs:
      print(f"{job.name}: {job.shell()}")
    return
  launch(jobs, FLAGS.platform, FLAGS.slice, FLAGS.executor, FLAGS.image, FLAGS.title)


if __name__ == "__main__":
  define_flags()
  app.run(main)
