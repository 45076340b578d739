"""Input side of cosmojax: records, image processing, tokenizers, chat formatting, grain.

  records           JSONL / Parquet / TFDS readers -> `cosmojax.types.Example`
  image_processing  Qwen2-VL image processor (host NumPy + PIL), placeholder counts
  tokenizer         small Qwen2.5-VL-style tokenizers (chat template, vision tokens)
  formatting        chat templates, placeholder expansion, loss masks, truncation
  batching          static-shape buckets and collation into SFTBatch / PromptBatch
  pipeline          grain mixtures, sharding, batching, prefetch, checkpointable iterators

Synthetic multimodal safety suite and jailbreak augmentation:
  synthetic          tasks, splits, sources, SFT mixture, suite tokenizer (see its docstring)
  synthetic_lexicon  the closed vocabulary, templates and refusal phrasings
  synthetic_images   scenes, object glyphs and rendered text
  synthetic_tfds     the suite as a local TFDS dataset (import it explicitly: loads TFDS)
  synthetic_report   `python -m cosmojax.data.synthetic_report --out DIR`
  jailbreak          typographic / query-relevant image / split-intent transforms
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
from cosmojax.data.jailbreak import (
    JAILBREAK_KINDS,
    JailbreakAugment,
    JailbreakConfig,
    augment_jailbreak,
)
from cosmojax.data.synthetic import (
    GENERAL_TASKS,
    JAILBREAK_TASKS,
    TASK_NAMES,
    UNSAFE_TASKS,
    SFTMixConfig,
    SuiteConfig,
    SyntheticSource,
    build_suite_tokenizer,
    generate,
    make_example,
    sft_source,
)
from cosmojax.data.synthetic_lexicon import REFUSALS
from cosmojax.data.synthetic_safety import safety_target
