"""grain input pipelines: mixtures of sources into sharded, bucketed, checkpointable batches.

    sources (name -> Sequence[Example])
      -> per source: repeat forever, shuffled afresh every epoch (seeded by seed and name)
      -> MapDataset.mix with the stage's weights, then shuffle within windows
      -> this process's slice: elements process_index, process_index + process_count, ...
      -> format (tokens, masks, image patches; dropped examples vanish) in `num_threads`
      -> batch of `BatchSpec.batch_size` into static buckets -> prefetch `prefetch` batches
      -> yields (SFTBatch | PromptBatch, BatchMeta)

Mixing is stratified rather than sampled: `grain.MapDataset.mix` interleaves the sources
evenly in their weight proportions, and the window shuffle then randomises the order inside
each window of `window_size` elements, so every window holds each source in proportion (up
to rounding) and batches vary in composition. Everything before formatting is a random-access
`MapDataset`, so the process shards are exact slices of one global stream and the iterator
state is one read position: `iterator.get_state()` / `set_state()` checkpoint and restore the
stream exactly (prefetched batches included); the state is a small JSON-serialisable dict to
store beside the model checkpoint. Formatting runs in threads of this process (PIL and NumPy
release the GIL), not in `grain.DataLoader` worker processes, so the formatter's drop counts
are this process's.

A curriculum is a sequence of stages, each a map from source name to weight
(`weights_for_stage`); a new stage builds a new pipeline from the same sources.
"""

from __future__ import annotations

import functools
import sys
import zlib
from typing import Mapping, Sequence

import grain
import jax
import numpy as np

from cosmojax import types
from cosmojax.data import batching
from cosmojax.data import formatting

MODES = ("sft", "prompt")


def weights_for_stage(
    stages: Mapping[str, Mapping[str, float]], stage: str
) -> dict[str, float]:
  """The source -> weight map of one stage of a curriculum config, with clear errors."""
  if stage not in stages:
    raise KeyError(f"unknown data stage {stage!r}; known: {sorted(stages)}")
  return dict(stages[stage])


def mixture(
    sources: Mapping[str, Sequence[types.Example] | grain.MapDataset],
    weights: Mapping[str, float],
    *,
    seed: int,
    window_size: int = 256,
) -> grain.MapDataset:
  """An endless, shuffled, weighted mixture of sources (see the module docstring).

  Args:
    sources: name -> examples (a `RecordSet`, a `TfdsSource`, any sequence, or a MapDataset).
    weights: name -> weight >= 0 for the sources to mix (others are left out; weights need not
      sum to 1; zero-weight sources are left out).
    seed: shuffling seed (each source's order depends on the seed and its name only).
    window_size: elements per shuffle window of the mixed stream: at least a few batches, so
      that batch composition varies, and well below len(source) / share for the smallest
      sources, or an example can come up twice in one window (from two epochs).
  """
  unknown = sorted(set(weights) - set(sources))
  if unknown:
    raise KeyError(f"mixture weights name unknown sources {unknown}; known: {sorted(sources)}")
  negative = {k: w for k, w in weights.items() if not w >= 0}
  if negative:
    raise ValueError(f"mixture weights must be >= 0, got {negative}")
  names = [name for name in sorted(weights) if weights[name] > 0]
  if not names:
    raise ValueError(f"mixture has no source with a positive weight: {dict(weights)}")
  parts = []
  for name in names:
    source = sources[name]
    ds = source if isinstance(source, grain.MapDataset) else grain.MapDataset.source(source)
    if len(ds) == 0 or len(ds) == sys.maxsize:
      raise ValueError(f"mixture source {name!r} must be finite and non-empty, has length "
                       f"{len(ds)}; the mixture repeats it.")
    parts.append(_BlockShuffleMapDataset(ds.repeat(), len(ds), _derive_seed(seed, name)))
  mixed = grain.MapDataset.mix(parts, weights=[float(weights[n]) for n in names])
  return _BlockShuffleMapDataset(mixed, window_size, _derive_seed(seed, "window"))


def shard(
    ds: grain.MapDataset, process_index: int | None = None, process_count: int | None = None
) -> grain.MapDataset:
  """This process's slice of a MapDataset: elements i with i % process_count == process_index.

  Defaults to `jax.process_index()` and `jax.process_count()`.
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f"process_index {index} is outside [0, {count}).")
  return ds[index::count] if count > 1 else ds


def batches(
    examples: grain.MapDataset,
    formatter: formatting.ChatFormatter,
    collator: batching.Collator,
    *,
    mode: str,
    drop_remainder: bool = True,
    num_threads: int = 0,
    prefetch: int = 2,
) -> grain.IterDataset:
  """Formats and batches a MapDataset of Examples (None elements are skipped).

  Args:
    examples: the (sharded) examples, in order.
    formatter: formats each example (`sft` or `prompt` according to `mode`).
    collator: builds the device batch and its `BatchMeta`.
    mode: "sft" (right-padded SFTBatch) or "prompt" (left-padded PromptBatch).
    drop_remainder: drop a short final batch (finite datasets); else pad it with empty rows.
    num_threads: formatting threads (0: in the consuming thread).
    prefetch: batches prepared ahead in a background thread (0: none).
  """
  if mode not in MODES:
    raise ValueError(f"unknown batch mode {mode!r}; known: {MODES}")
  format_fn = formatter.sft if mode == "sft" else formatter.prompt
  collate_fn = collator.sft if mode == "sft" else collator.prompts
  read_options = grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=max(1, 4 * num_threads))
  ds = examples.map(format_fn).to_iter_dataset(read_options)
  ds = ds.batch(collator.spec.batch_size, drop_remainder=drop_remainder, batch_fn=collate_fn)
  if prefetch:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
  return ds


def build_pipeline(
    sources: Mapping[str, Sequence[types.Example] | grain.MapDataset],
    weights: Mapping[str, float],
    formatter: formatting.ChatFormatter,
    spec: batching.BatchSpec,
    *,
    mode: str,
    seed: int,
    task_names: Sequence[str],
    position_fn: batching.PositionFn | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    window_size: int = 256,
    num_threads: int = 0,
    prefetch: int = 2,
) -> grain.IterDataset:
  """The whole training pipeline: mixture -> shard -> format -> bucketed batches.

  `iter(pipeline)` gives a `grain.DatasetIterator` with `get_state()`/`set_state()`.
  `spec.batch_size` is the per-process batch size. Other arguments as in `mixture`,
  `shard`, `batches` and `batching.Collator`.
  """
  ds = mixture(sources, weights, seed=seed, window_size=window_size)
  ds = shard(ds, process_index, process_count)
  collator = batching.Collator.for_formatter(spec, formatter, task_names, position_fn)
  return batches(ds, formatter, collator, mode=mode, num_threads=num_threads, prefetch=prefetch)


def eval_batches(
    examples: Sequence[types.Example],
    formatter: formatting.ChatFormatter,
    spec: batching.BatchSpec,
    *,
    task_names: Sequence[str],
    position_fn: batching.PositionFn | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 0,
    prefetch: int = 2,
) -> grain.IterDataset:
  """One ordered pass of prompt batches over `examples` (this process's shard).

  The last batch is padded with empty rows (`example_mask` False) instead of being dropped.
  With several processes the shards can differ by one batch; where processes must step in
  lockstep, pad `examples` to a multiple of process_count * batch_size first.
  """
  ds = shard(grain.MapDataset.source(examples), process_index, process_count)
  collator = batching.Collator.for_formatter(spec, formatter, task_names, position_fn)
  return batches(ds, formatter, collator, mode="prompt", drop_remainder=False,
                 num_threads=num_threads, prefetch=prefetch)


class _BlockShuffleMapDataset(grain.MapDataset):
  """Permutes an endless MapDataset within consecutive blocks of `block_size` elements.

  Block b is permuted by `np.random.default_rng([seed, b]).permutation(block_size)`. Over a
  repeated source with block_size = len(source), that is a fresh shuffle every epoch. (grain's
  own `shuffle` and `WindowShuffleMapDataset` use `index_shuffle`, which costs about a
  millisecond per element for blocks of a few hundred elements; this costs microseconds.)
  """

  def __init__(self, parent: grain.MapDataset, block_size: int, seed: int):
    super().__init__(parent)
    if block_size <= 0 or (len(parent) != sys.maxsize and len(parent) % block_size):
      raise ValueError(f"block_size {block_size} must be positive and divide the length "
                       f"{len(parent)} of the parent.")
    self._block_size = block_size
    self._seed = seed
    self._permutation = functools.lru_cache(maxsize=8)(self._make_permutation)

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return f"_BlockShuffleMapDataset(block_size={self._block_size})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    block, offset = divmod(index, self._block_size)
    return self._parent[block * self._block_size + int(self._permutation(block)[offset])]

  def _make_permutation(self, block: int) -> np.ndarray:
    return np.random.default_rng([self._seed, block]).permutation(self._block_size)


def _derive_seed(seed: int, name: str) -> int:
  """A 32-bit seed from a base seed and a name, stable across runs and machines."""
  return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])
