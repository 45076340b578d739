"""Training checkpoints: parameters, optimizer state, step, stage, data position, RNG, metadata.

    checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=3, save_interval_steps=50)
    checkpointer.save(TrainingCheckpoint(step, params, opt_state, stage="rl_general",
                                         stage_index=1, data_state=iterator.get_state(),
                                         rng=rng, metadata={"config": config.to_dict()}))
    ...
    if checkpointer.latest_step() is not None:
      ckpt = checkpointer.restore(params=abstract_target(abstract_params, mesh),
                                  opt_state=abstract_target(abstract_opt_state, mesh))
      iterator.set_state(ckpt.data_state)
    checkpointer.close()   # waits for the last asynchronous save

Built on orbax `CheckpointManager`. Each step directory holds the items

    params, opt_state   StandardSave pytrees (nnx.State or any pytree of arrays; sharded
                        arrays are written shard by shard and restored into the shardings
                        of the restore target, which may differ from the saved ones)
    meta                JSON: format version, step, stage name and index, the RNG key
                        (`jax.random.key_data` plus the key implementation's name, so typed
                        keys come back typed), free-form metadata
    data                JSON: the data iterator state (a JSON value, or bytes stored base64),
                        present only when one was given

Saving is asynchronous by default: `save` returns once the arrays are copied off the
devices (so the trainer may donate or overwrite its buffers) and writing goes on in the
background; `wait_until_finished` blocks until it is on disk. A step directory becomes
visible only once complete (orbax writes to a temporary directory and renames it), so a
run killed mid-save restores from the previous checkpoint; the next `Checkpointer` on the
directory deletes the killed save's temporary directory.

Restoring needs a target for each pytree item (the saved pytree structure is not kept):
concrete arrays or `jax.ShapeDtypeStruct`s, whose shardings say where the arrays go
(`abstract_target(jax.eval_shape(...), mesh)` derives them from the logical axis names).
The target is checked against the saved metadata first, so an incompatible checkpoint fails
with an error that names the directory, step, item and leaf (missing or extra leaves, shape
mismatch); any other failure of an item (missing files, truncated or corrupt data) is
re-raised as `CheckpointError` naming the directory, step and item. Dtypes may differ:
arrays are cast to the target dtype.

Multi-process runs: every process calls `save` and `restore` (orbax synchronizes them). The
JSON items are written by process 0, so `data_state` must be the same on every process (or
be process 0's); a per-process data position needs one checkpointer item per process, not
supported here.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding

from cosmojax.parallel import axes
from cosmojax.parallel.sharding import Rules, state_shardings

FORMAT_VERSION = 1
PARAMS, OPT_STATE, META, DATA = "params", "opt_state", "meta", "data"
_SHOWN = 5  # how many offending leaves an error message lists
_CAUSE_CHARS = 600  # how much of an underlying error message is quoted


class CheckpointError(RuntimeError):
  """A checkpoint is missing, corrupt or incompatible with the restore target."""


def _cause(error: Exception) -> str:
  """`Type: message` of an orbax/tensorstore error, without tensorstore's long spec dump."""
  message = str(error).split(" [tensorstore_spec=")[0]
  return f"{type(error).__name__}: {message[:_CAUSE_CHARS]}"


@dataclasses.dataclass(frozen=True)
class TrainingCheckpoint:
  """Everything needed to resume training exactly.

  Attributes:
    step: the global training step after which the state was taken.
    params: the model parameters (an nnx.State or any pytree of arrays).
    opt_state: the optimizer state, or None (not saved; e.g. a parameters-only export).
    stage: the name of the schedule stage ("sft", "rl_general", ...).
    stage_index: the position of the stage in the schedule.
    data_state: the data iterator state (`iterator.get_state()`): a JSON value or bytes.
    rng: a JAX PRNG key (typed or raw uint32), or None.
    metadata: free-form JSON (config, code version, counters, ...).
  """

  step: int
  params: Any
  opt_state: Any = None
  stage: str = ""
  stage_index: int = 0
  data_state: Any = None
  rng: jax.Array | None = None
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def abstract_target(tree: Any, mesh: Mesh | None = None,
                    rules: Rules = axes.DEFAULT_RULES) -> Any:
  """A restore target: every array leaf as a `jax.ShapeDtypeStruct` with a sharding.

  A leaf's own concrete sharding is kept. With `mesh`, a sharding on an abstract mesh (as
  `jax.eval_shape` returns on explicit meshes) is bound to `mesh`, and a leaf without one
  gets the sharding its nnx Variable's logical axis names give under `rules`
  (`parallel.state_shardings`), else is replicated. So the optimizer state of
  `jax.eval_shape(tx.init, abstract_params)`, whose moments are Variables carrying the
  parameters' logical names, shards like the parameters. Without `mesh`, leaves without a
  sharding restore with the sharding they were saved with (which needs the same devices).
  """

  def convert(x, logical_sharding=None):
    if not isinstance(x, (jax.Array, jax.ShapeDtypeStruct, np.ndarray)):
      return x
    sharding = getattr(x, "sharding", None)
    if mesh is not None:
      if isinstance(sharding, NamedSharding) and not isinstance(sharding.mesh, Mesh):
        sharding = NamedSharding(mesh, sharding.spec)
      elif sharding is None:
        sharding = logical_sharding
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  if mesh is None:
    return jax.tree.map(convert, tree)
  return jax.tree.map(convert, tree, state_shardings(tree, mesh, rules))


def _fetch(x: jax.Array) -> np.ndarray:
  """Host copy of a (possibly replicated, multi-process) array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)
  return np.asarray(x)


def _encode_rng(rng: jax.Array | None) -> dict[str, Any] | None:
  if rng is None:
    return None
  typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
  data = _fetch(jax.random.key_data(rng) if typed else rng)
  return {"typed": bool(typed), "impl": str(jax.random.key_impl(rng)) if typed else None,
          "dtype": str(data.dtype), "shape": list(data.shape), "data": data.ravel().tolist()}


def _decode_rng(record: Mapping[str, Any] | None) -> jax.Array | None:
  if record is None:
    return None
  data = np.asarray(record["data"], dtype=record["dtype"]).reshape(record["shape"])
  if record["typed"]:
    return jax.random.wrap_key_data(data, impl=record["impl"])
  return jnp.asarray(data)


def _encode_data_state(state: Any) -> dict[str, Any]:
  if isinstance(state, (bytes, bytearray)):
    return {"kind": "bytes", "base64": base64.b64encode(bytes(state)).decode("ascii")}
  return {"kind": "json", "value": state}


def _decode_data_state(record: Mapping[str, Any]) -> Any:
  if record.get("kind") == "bytes":
    return base64.b64decode(record["base64"])
  if record.get("kind") == "json":
    return record["value"]
  raise ValueError(f"unknown data state kind {record.get('kind')!r}")


def _check_json(value: Any, field: str) -> None:
  try:
    json.dumps(value)
  except (TypeError, ValueError) as e:
    raise TypeError(f"TrainingCheckpoint.{field} must be JSON-serializable: {e}") from None


class Checkpointer:
  """Saves and restores `TrainingCheckpoint`s in a directory (see the module docstring).

  Args:
    directory: where step directories go (created if missing).
    max_to_keep: keep only the newest N checkpoints (None: keep all).
    save_interval_steps: `save` writes only at steps that are multiples of this (and the
      first one) unless forced.
    async_save: write in the background (`wait_until_finished` to block).
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
               save_interval_steps: int = 1, async_save: bool = True):
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None; got {max_to_keep}")
    if save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be >= 1; got {save_interval_steps}")
    self.directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    handlers = {PARAMS: ocp.StandardCheckpointHandler(),
                OPT_STATE: ocp.StandardCheckpointHandler(),
                META: ocp.JsonCheckpointHandler(), DATA: ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=handlers)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None when there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    """Whether `save` at `step` would write (the save interval, no checkpoint there yet)."""
    return self._manager.should_save(step)

  def save(self, checkpoint: TrainingCheckpoint, *, force: bool = False) -> bool:
    """Saves (asynchronously by default); returns whether a checkpoint was written.

    Raises:
      TypeError: naming the field when metadata or data_state is not JSON-serializable.
    """
    if checkpoint.params is None:
      raise ValueError("TrainingCheckpoint.params is None: nothing to save")
    _check_json(dict(checkpoint.metadata), "metadata")
    meta = {"format_version": FORMAT_VERSION, "step": int(checkpoint.step),
            "stage": checkpoint.stage, "stage_index": int(checkpoint.stage_index),
            "has_opt_state": checkpoint.opt_state is not None,
            "has_data_state": checkpoint.data_state is not None,
            "rng": _encode_rng(checkpoint.rng), "metadata": dict(checkpoint.metadata)}
    items = {PARAMS: ocp.args.StandardSave(checkpoint.params), META: ocp.args.JsonSave(meta)}
    if checkpoint.opt_state is not None:
      items[OPT_STATE] = ocp.args.StandardSave(checkpoint.opt_state)
    if checkpoint.data_state is not None:
      data = _encode_data_state(checkpoint.data_state)
      _check_json(data, "data_state")
      items[DATA] = ocp.args.JsonSave(data)
    return self._manager.save(int(checkpoint.step), args=ocp.args.Composite(**items),
                              force=force)

  def wait_until_finished(self) -> None:
    """Blocks until every pending asynchronous save is on disk."""
    self._manager.wait_until_finished()

  def _error(self, step: int, item: str, problem: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {self.directory} step {step}, item {item!r}: {problem}")

  def _restore_item(self, step: int, item: str, args: ocp.args.CheckpointArgs) -> Any:
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]
    except Exception as e:  # orbax/tensorstore raise many types; all mean "cannot restore"
      raise self._error(step, item, f"cannot be restored ({_cause(e)})") from e

  def _item_metadata(self, step: int, item: str) -> Any:
    """The saved tree metadata of a pytree item (names, shapes), read on its own so that an
    unreadable item is named."""
    path = os.path.join(self.directory, str(step), item)
    if not os.path.isdir(path):
      raise self._error(step, item, f"missing (no directory {path})")
    try:
      return ocp.StandardCheckpointHandler().metadata(epath.Path(path))
    except Exception as e:  # orbax/tensorstore raise many types; all mean "unreadable"
      raise self._error(step, item, f"metadata cannot be read ({_cause(e)})") from e

  def _check_target(self, step: int, item: str, target: Any) -> None:
    """Compares the target's leaves with the saved ones (paths, shapes)."""
    metadata = self._item_metadata(step, item)
    tree = getattr(metadata, "tree", metadata)
    if tree is None:
      raise self._error(step, item, "its metadata holds no tree")
    saved = {".".join(k): getattr(m, "shape", None)
             for k, m in ocp.tree.to_flat_dict(tree).items()}
    wanted = {".".join(k): np.shape(x) for k, x in ocp.tree.to_flat_dict(target).items()}
    problems = []
    missing = sorted(set(wanted) - set(saved))
    extra = sorted(set(saved) - set(wanted))
    if missing:
      problems.append(f"{len(missing)} target leaves are not in the checkpoint "
                      f"({', '.join(missing[:_SHOWN])})")
    if extra:
      problems.append(f"{len(extra)} saved leaves are not in the target "
                      f"({', '.join(extra[:_SHOWN])})")
    shapes = [f"{n}: saved {tuple(saved[n])}, target {tuple(wanted[n])}"
              for n in sorted(set(saved) & set(wanted))
              if saved[n] is not None and tuple(saved[n]) != tuple(wanted[n])]
    if shapes:
      problems.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:_SHOWN])})")
    if problems:
      raise self._error(step, item, "incompatible with the restore target: "
                        + "; ".join(problems))

  def _read_meta(self, step: int) -> dict[str, Any]:
    meta = self._restore_item(step, META, ocp.args.JsonRestore())
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
      raise self._error(step, META, f"format_version is {version!r}; this code reads "
                        f"{FORMAT_VERSION}")
    if meta.get("step") != step:
      raise self._error(step, META, f"records step {meta.get('step')}, not {step}")
    return meta

  def restore(self, step: int | None = None, *, params: Any, opt_state: Any = None
              ) -> TrainingCheckpoint:
    """Restores a checkpoint into the given targets.

    Args:
      step: the step to restore; None for the latest.
      params: the target of the parameters: arrays or ShapeDtypeStructs, whose shardings
        the restored arrays get (`abstract_target`).
      opt_state: the target of the optimizer state, or None to skip it (the returned
        checkpoint then has opt_state None).

    Raises:
      CheckpointError: naming the directory, step and item, when there is no checkpoint or
        it is corrupt or incompatible with the targets.
    """
    self._manager.wait_until_finished()
    self._manager.reload()
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise CheckpointError(f"no checkpoint in {self.directory}")
      step = steps[-1]
    elif step not in steps:
      raise CheckpointError(f"no checkpoint of step {step} in {self.directory}; "
                            f"available steps: {steps}")
    meta = self._read_meta(step)
    restored: dict[str, Any] = {}
    for item, target in ((PARAMS, params), (OPT_STATE, opt_state)):
      if target is None:
        continue
      if item == OPT_STATE and not meta["has_opt_state"]:
        raise self._error(step, item, "was not saved (the checkpoint has no optimizer state)")
      target = abstract_target(target)
      self._check_target(step, item, target)
      restored[item] = self._restore_item(step, item, ocp.args.StandardRestore(target))
    data_state = None
    if meta["has_data_state"]:
      record = self._restore_item(step, DATA, ocp.args.JsonRestore())
      try:
        data_state = _decode_data_state(record)
      except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise self._error(step, DATA, f"malformed data state ({e})") from e
    return TrainingCheckpoint(step=step, params=restored[PARAMS],
                              opt_state=restored.get(OPT_STATE), stage=meta["stage"],
                              stage_index=meta["stage_index"], data_state=data_state,
                              rng=_decode_rng(meta["rng"]), metadata=meta["metadata"])

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
