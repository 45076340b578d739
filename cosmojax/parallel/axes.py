"""Axis names: the one home of every logical and mesh axis name in cosmojax.

Layers annotate their parameters and activations with *logical* axis names (what a dimension
means: "embed", "mlp", "heads", ...). One table of rules maps logical names to *mesh* axes
("data", "fsdp", "tensor"), so that changing the parallelism of a run is a config change, never
a model change (MaxText `logical_axis_rules`).
"""

from __future__ import annotations

# Mesh axes, outermost first. A mesh of shape (data, fsdp, tensor).
DATA = "data"  # pure data parallelism: replicas of the parameters
FSDP = "fsdp"  # data parallelism with parameters and optimizer state sharded across it
TENSOR = "tensor"  # tensor (model) parallelism inside a layer
MESH_AXES = (DATA, FSDP, TENSOR)

# Logical axes of activations.
BATCH = "batch"
LENGTH = "length"  # sequence/time
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_VOCAB = "act_vocab"

# Logical axes of parameters.
EMBED = "embed"  # model width (d_model)
MLP = "mlp"  # feed-forward hidden width
HEADS = "heads"  # query heads
KV_HEADS = "kv_heads"  # key/value heads (grouped-query attention)
HEAD_DIM = "head_dim"
VOCAB = "vocab"
NORM = "norm"  # 1-D scale vectors: never sharded
VISION_EMBED = "vision_embed"
VISION_MLP = "vision_mlp"
VISION_HEADS = "vision_heads"
PATCH = "patch"  # flattened patch features of the vision patch embedding

# Logical -> mesh axis rules. A logical name may map to a tuple of mesh axes or None
# (replicated). The batch is split over both data-parallel axes; parameters are sharded over
# fsdp along the model width and over tensor along the "parallel" dimension of each layer.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (BATCH, (DATA, FSDP)),
    (LENGTH, None),
    (ACT_EMBED, None),
    (ACT_HEADS, TENSOR),
    (ACT_VOCAB, TENSOR),
    (EMBED, FSDP),
    (MLP, TENSOR),
    (HEADS, TENSOR),
    (KV_HEADS, TENSOR),
    (HEAD_DIM, None),
    (VOCAB, TENSOR),
    (NORM, None),
    (VISION_EMBED, FSDP),
    (VISION_MLP, TENSOR),
    (VISION_HEADS, TENSOR),
    (PATCH, None),
)
