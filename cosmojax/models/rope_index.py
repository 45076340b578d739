"""M-RoPE position ids of Qwen2.5-VL prompts: host-side NumPy, equal to transformers.

Text tokens advance all three rows (temporal, height, width) by one per token. An image of
grid (t, h, w) patches occupies t * (h/m) * (w/m) placeholder tokens (m = spatial merge size)
whose positions are start + (frame, row, col) of the merged grid; the text after it continues at
start + max(h, w) / m. Padding (attention_mask 0) is skipped and gets position 0.
"""

from __future__ import annotations

import numpy as np

from cosmojax.models.configs import Qwen2_5_VLConfig


def _row_positions(ids: np.ndarray, grids, cursor: list[int], config: Qwen2_5_VLConfig,
                   row: int) -> np.ndarray:
  """Positions [3, len(ids)] of one row's real tokens; consumes images from `grids`."""
  m = config.vision.spatial_merge_size
  is_image = ids == config.image_token_id
  parts, pos, i, n = [], 0, 0, len(ids)
  while i < n:
    if not is_image[i]:
      j = i
      while j < n and not is_image[j]:
        j += 1
      parts.append(np.broadcast_to(np.arange(j - i) + pos, (3, j - i)))
      pos += j - i
      i = j
      continue
    if cursor[0] >= len(grids):
      raise ValueError(f"row {row}: more image placeholder runs than the {len(grids)} images of "
                       "image_grid_thw")
    t, h, w = (int(v) for v in grids[cursor[0]])
    lt, lh, lw = t, h // m, w // m
    count = lt * lh * lw
    if i + count > n or not is_image[i:i + count].all():
      raise ValueError(f"row {row}: image {cursor[0]} (grid {[t, h, w]}) needs {count} "
                       f"consecutive image tokens (id {config.image_token_id}) at position {i}")
    tt, hh, ww = np.meshgrid(np.arange(lt), np.arange(lh), np.arange(lw), indexing="ij")
    parts.append(np.stack([tt, hh, ww]).reshape(3, -1) + pos)
    pos += max(h, w) // m
    cursor[0] += 1
    i += count
  return np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), np.int64)


def get_rope_index(input_ids, image_grid_thw, attention_mask, config: Qwen2_5_VLConfig
                   ) -> tuple[np.ndarray, np.ndarray]:
  """M-RoPE positions of a batch of prompts with interleaved text and images.

  Args:
    input_ids: [batch, time] token ids; each image is a run of image_token_id placeholders.
    image_grid_thw: [num_images, 3] patch grids of the images in order of appearance (row 0's
      images first), or None for text only.
    attention_mask: [batch, time] 1 for real tokens, 0 for padding, or None.
    config: the model config (image token id, spatial merge size).

  Returns:
    position_ids [3, batch, time] int32, and rope_deltas [batch, 1] int32 = max position + 1
    - number of real tokens (the offset of generated tokens' positions, as transformers).
  """
  ids = np.asarray(input_ids)
  b, t = ids.shape
  mask = np.ones((b, t), bool) if attention_mask is None else np.asarray(attention_mask) > 0
  if mask.shape != ids.shape:
    raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
  grids = np.zeros((0, 3), np.int64) if image_grid_thw is None else (
      np.asarray(image_grid_thw).reshape(-1, 3))
  positions = np.zeros((3, b, t), np.int64)
  deltas = np.zeros((b, 1), np.int64)
  cursor = [0]
  for row in range(b):
    row_pos = _row_positions(ids[row][mask[row]], grids, cursor, config, row)
    positions[:, row, mask[row]] = row_pos
    if row_pos.shape[1]:
      deltas[row, 0] = row_pos.max() + 1 - row_pos.shape[1]
  if cursor[0] != len(grids):
    raise ValueError(f"image_grid_thw has {len(grids)} images but the prompts hold "
                     f"{cursor[0]} image placeholder runs")
  return positions.astype(np.int32), deltas.astype(np.int32)
