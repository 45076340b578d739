"""Meshes, logical axis rules, sharding of model state and batches, multi-host start-up."""

from cosmojax.parallel import axes
from cosmojax.parallel.mesh import initialize_distributed, make_mesh, mesh_from_config, mesh_shape
from cosmojax.parallel.sharding import (
    batch_spec,
    logical_to_mesh_spec,
    shard_batch,
    shard_state,
    sharded_init,
    state_shardings,
)
