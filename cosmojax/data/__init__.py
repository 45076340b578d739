"""Input side of cosmojax: records, image processing, tokenizers, chat formatting, grain.

  records           JSONL / Parquet / TFDS readers -> `cosmojax.types.Example`
  image_processing  Qwen2-VL image processor (host NumPy + PIL), placeholder counts
  tokenizer         small Qwen2.5-VL-style tokenizers (chat template, vision tokens)
  formatting        chat templates, placeholder expansion, loss masks, truncation
  batching          static-shape buckets and collation into SFTBatch / PromptBatch
  pipeline          grain mixtures, sharding, batching, prefetch, checkpointable iterators
"""

from cosmojax.data.batching import BatchSpec, Collator, PositionFn, patch_budget
from cosmojax.data.formatting import ChatFormatter, DropLog, FormattedExample
from cosmojax.data.image_processing import (
    CLIP_MEAN,
    CLIP_STD,
    ImageProcessor,
    ProcessedImages,
    image_token_counts,
    load_image,
    num_image_tokens,
    smart_resize,
    to_rgb_array,
)
from cosmojax.data.pipeline import (
    batches,
    build_pipeline,
    eval_batches,
    mixture,
    shard,
    weights_for_stage,
)
from cosmojax.data.records import (
    ReadReport,
    RecordError,
    RecordSet,
    TfdsSource,
    read_jsonl,
    read_parquet,
    record_to_example,
    tfds_record_to_example,
)
from cosmojax.data.tokenizer import (
    SPECIAL_TOKENS,
    QwenTokenIds,
    build_tokenizer,
    load_tokenizer,
    qwen_chat_template,
    qwen_token_ids,
)
