"""Logical-to-mesh sharding of model state and batches.

Layers name the logical axes of their parameters (`nnx.with_partitioning(init, (EMBED, MLP))`,
stored as the Variable's `out_sharding` metadata); `axes.DEFAULT_RULES` (or a config's rules)
maps those names to mesh axes. The mapping is divisibility-aware: a mesh axis that does not
divide a dimension is left out for that dimension (the dimension is replicated instead), so a
tiny test model runs on any mesh and a 7B model shards as the rules say.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence, TypeVar

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cosmojax.parallel import axes


Rules = Sequence[tuple[str, "str | tuple[str, ...] | None"]]
M = TypeVar("M", bound=nnx.Module)


def _as_tuple(mesh_axes: str | tuple[str, ...] | None) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def logical_to_mesh_spec(
    logical_names: Sequence[str | None],
    rules: Rules = axes.DEFAULT_RULES,
    *,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
) -> PartitionSpec:
  """Maps logical axis names to a `PartitionSpec` over mesh axes.

  Args:
    logical_names: one logical name (or None: replicated) per dimension.
    rules: (logical name, mesh axes) pairs; the first rule for a name wins.
    shape: the array shape; with `mesh`, mesh axes that do not divide a dimension are dropped.
    mesh: the mesh whose axis sizes are checked against `shape`.

  Raises:
    KeyError: a logical name has no rule (the message lists the known names).
  """
  table: dict[str, tuple[str, ...]] = {}
  for name, mesh_axes in rules:
    table.setdefault(name, _as_tuple(mesh_axes))
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(logical_names):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise KeyError(f"no sharding rule for logical axis {name!r}; known: {sorted(table)}")
    chosen = []
    for mesh_axis in table[name]:
      if mesh_axis in used:
        continue  # a mesh axis shards at most one dimension of an array
      if mesh is not None and shape is not None:
        size = math.prod(mesh.shape[a] for a in (*chosen, mesh_axis))
        if shape[dim] % size:
          continue
      chosen.append(mesh_axis)
    used.update(chosen)
    spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
  return PartitionSpec(*spec)


def _variable_spec(var: nnx.Variable, mesh: Mesh, rules: Rules) -> PartitionSpec:
  names = var.get_metadata().get("out_sharding")
  if not names:
    return PartitionSpec()
  return logical_to_mesh_spec(names, rules, shape=var.shape, mesh=mesh)


def state_shardings(state: Any, mesh: Mesh, rules: Rules = axes.DEFAULT_RULES) -> Any:
  """`NamedSharding`s for an `nnx.State` (Variable structure kept, so it can be passed to
  `jax.jit` as in/out shardings of the state). Variables without logical names and plain
  arrays are replicated."""

  def leaf_sharding(x):
    if isinstance(x, nnx.Variable):
      return x.replace(NamedSharding(mesh, _variable_spec(x, mesh, rules)))
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(leaf_sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_state(state: Any, mesh: Mesh, rules: Rules = axes.DEFAULT_RULES) -> Any:
  """Places an existing state on `mesh` according to its logical axis names."""
  return jax.device_put(state, state_shardings(state, mesh, rules))


def sharded_init(create: Callable[[], M], mesh: Mesh, rules: Rules = axes.DEFAULT_RULES) -> M:
  """Builds a module directly sharded over `mesh`: no device ever holds the whole model.

  `create` builds the module (e.g. `lambda: Qwen2_5_VL(config, rngs=nnx.Rngs(0))`); it is
  traced abstractly to find shapes and logical names, then run under `jax.jit` with the
  shardings as output shardings.
  """
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(create)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)
    init = jax.jit(lambda: nnx.split(create())[1], out_shardings=shardings)
    return nnx.merge(graphdef, init())


def batch_spec(ndim: int, batch_dim: int = 0) -> PartitionSpec:
  """The batch dimension over the data-parallel axes (data, fsdp); others replicated."""
  spec: list[Any] = [None] * ndim
  spec[batch_dim] = (axes.DATA, axes.FSDP)
  return PartitionSpec(*spec)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places every array of `batch` with its leading dimension split over (data, fsdp).

  Raises:
    ValueError: naming the array whose leading dimension the data-parallel size does not divide.
  """
  dp = mesh.shape[axes.DATA] * mesh.shape[axes.FSDP]

  def put(path, x):
    if not hasattr(x, "ndim") or x.ndim == 0:
      return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
    if x.shape[0] % dp:
      raise ValueError(
          f"batch array {jax.tree_util.keystr(path)} has leading dimension {x.shape[0]}, "
          f"not a multiple of the data-parallel size {dp} (data x fsdp)."
      )
    return jax.device_put(x, NamedSharding(mesh, batch_spec(x.ndim)))

  return jax.tree_util.tree_map_with_path(put, batch)
