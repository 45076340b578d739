"""Device meshes and multi-host start-up.

A cosmojax mesh always has the three axes of `axes.MESH_AXES`, (data, fsdp, tensor), so that
logical axis rules apply unchanged from one run to the next; an axis of size 1 is a no-op.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

import jax
import numpy as np

from cosmojax.parallel import axes

_log = logging.getLogger(__name__)


def mesh_shape(
    num_devices: int, data: int = 1, fsdp: int = -1, tensor: int = 1
) -> tuple[int, int, int]:
  """Resolves a (data, fsdp, tensor) request against a device count.

  At most one size may be -1: it takes every device the others leave.

  Raises:
    ValueError: naming the sizes when they do not multiply to `num_devices`.
  """
  sizes = {axes.DATA: data, axes.FSDP: fsdp, axes.TENSOR: tensor}
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {sizes}.")
  for name, size in sizes.items():
    if size != -1 and size < 1:
      raise ValueError(f"mesh: axis {name!r} has size {size}; sizes are >= 1 or -1.")
  fixed = int(np.prod([s for s in sizes.values() if s != -1]))
  if free:
    if num_devices % fixed:
      raise ValueError(
          f"mesh: {num_devices} devices cannot be split as {sizes} "
          f"({num_devices} is not a multiple of {fixed})."
      )
    sizes[free[0]] = num_devices // fixed
  if int(np.prod(list(sizes.values()))) != num_devices:
    raise ValueError(f"mesh: sizes {sizes} do not multiply to the {num_devices} devices.")
  return sizes[axes.DATA], sizes[axes.FSDP], sizes[axes.TENSOR]


def make_mesh(
    data: int = 1,
    fsdp: int = -1,
    tensor: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(len(devices), data, fsdp, tensor)
  return jax.make_mesh(
      shape,
      axes.MESH_AXES,
      axis_types=(jax.sharding.AxisType.Auto,) * 3,
      devices=devices,
  )


def mesh_from_config(config: Mapping[str, int] | None) -> jax.sharding.Mesh:
  """`make_mesh` from a config dict with optional keys data, fsdp, tensor."""
  config = dict(config or {})
  unknown = set(config) - {axes.DATA, axes.FSDP, axes.TENSOR}
  if unknown:
    raise ValueError(
        f"mesh config: unknown keys {sorted(unknown)}; known: {list(axes.MESH_AXES)}."
    )
  return make_mesh(**config)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
  """Starts multi-host JAX when the run spans several processes.

  On TPU pods and Slurm/Kubernetes GPU clusters `jax.distributed.initialize()` discovers
  everything itself; elsewhere pass the coordinator explicitly or set
  COSMOJAX_COORDINATOR / COSMOJAX_NUM_PROCESSES / COSMOJAX_PROCESS_ID. A single-process run
  (none of these set, no cluster detected) does nothing.

  Returns:
    Whether `jax.distributed.initialize` was called.
  """
  coordinator_address = coordinator_address or os.environ.get("COSMOJAX_COORDINATOR")
  if num_processes is None and "COSMOJAX_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["COSMOJAX_NUM_PROCESSES"])
  if process_id is None and "COSMOJAX_PROCESS_ID" in os.environ:
    process_id = int(os.environ["COSMOJAX_PROCESS_ID"])
  on_cluster = any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "JOBSET_NAME"))
  if coordinator_address is None and not on_cluster:
    return False
  jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
  )
  _log.info(
      "jax.distributed: process %d of %d, %d local / %d global devices",
      jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
  )
  return True
