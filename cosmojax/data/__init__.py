"""Input side of cosmojax (records, tokenizers, formatting, grain) and the synthetic suite."""

# --- Synthetic multimodal safety suite and jailbreak augmentation -----------------------------
#   synthetic          tasks, splits, sources, SFT mixture, suite tokenizer (see its docstring)
#   synthetic_lexicon  the closed vocabulary, templates and refusal phrasings
#   synthetic_images   scenes, object glyphs and rendered text
#   synthetic_tfds     the suite as a local TFDS dataset (import it explicitly: loads TFDS)
#   synthetic_report   `python -m cosmojax.data.synthetic_report --out DIR`
#   jailbreak          typographic / query-relevant image / split-intent transforms
from cosmojax.data.jailbreak import (
    JAILBREAK_KINDS,
    JailbreakAugment,
    JailbreakConfig,
    augment_jailbreak,
)
from cosmojax.data.synthetic import (
    CAPABILITY_TASKS,
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
