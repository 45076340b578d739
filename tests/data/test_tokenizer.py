"""The tiny Qwen2.5-VL-style tokenizer builder."""

import pytest

from cosmojax.data import tokenizer as tokenizer_lib
from tests import common

CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many circles?"}]},
    {"role": "assistant", "content": "The answer is 3."},
]
# The Qwen2.5-VL rendering of CONVERSATION, written out by hand from its published template.
RENDERED = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many circles?<|im_end|>\n"
    "<|im_start|>assistant\nThe answer is 3.<|im_end|>\n"
)


def test_special_token_ids_are_fixed():
  ids = tokenizer_lib.qwen_token_ids(common.tiny_tokenizer())
  assert ids == tokenizer_lib.QwenTokenIds(
      pad=0, eos=2, im_start=1, im_end=2, vision_start=3, vision_end=4, image_pad=5, video_pad=6)


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_chat_template_and_lossless_round_trip(kind, tmp_path):
  tok = tokenizer_lib.build_tokenizer(
      vocabulary=common.TINY_VOCABULARY, corpus=[RENDERED], kind=kind, vocab_size=300,
      save_dir=str(tmp_path))
  loaded = tokenizer_lib.load_tokenizer(str(tmp_path))
  for t in (tok, loaded):
    assert t.apply_chat_template(CONVERSATION, tokenize=False) == RENDERED
    assert t.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True) == (
        RENDERED[: RENDERED.index("The answer")])
  ids = loaded(RENDERED, add_special_tokens=False)["input_ids"]
  assert ids == tok(RENDERED, add_special_tokens=False)["input_ids"]
  assert loaded.decode(ids) == RENDERED
  assert loaded.decode(ids, skip_special_tokens=True) == (
      "system\nYou are a helpful assistant.\nuser\nHow many circles?\nassistant\n"
      "The answer is 3.\n")
  # Each special token is one token.
  for token in tokenizer_lib.SPECIAL_TOKENS:
    assert len(loaded(token, add_special_tokens=False)["input_ids"]) == 1


def test_word_tokens_are_words_spaces_and_punctuation():
  tok = common.tiny_tokenizer()
  pieces = tok.convert_ids_to_tokens(tok("The answer is 3.", add_special_tokens=False)["input_ids"])
  assert pieces == ["The", " ", "answer", " ", "is", " ", "3", "."]
  unknown = tok("zebra!", add_special_tokens=False)["input_ids"]
  assert tok.convert_ids_to_tokens(unknown) == ["<unk>", "!"]


def test_word_vocabulary_order_is_kept():
  tok = tokenizer_lib.build_tokenizer(vocabulary=["alpha", "beta"])
  assert tok.convert_tokens_to_ids(["alpha", "beta"]) == [
      tok.convert_tokens_to_ids("alpha"), tok.convert_tokens_to_ids("alpha") + 1]


def test_no_default_system_prompt():
  tok = tokenizer_lib.build_tokenizer(default_system=None)
  text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
  assert text == "<|im_start|>user\nhi<|im_end|>\n"


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="'two words' is not one word"):
    tokenizer_lib.build_tokenizer(vocabulary=["two words"])
  with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'"):
    tokenizer_lib.build_tokenizer(kind="sentencepiece")


def test_loads_unchanged_next_to_a_model_checkpoint(tmp_path):
  """A qwen2 config.json in the same directory must not turn the word-level tokenizer into
  transformers' Qwen2Tokenizer (which AutoTokenizer alone would pick)."""
  common.tiny_qwen2_hf_config().save_pretrained(str(tmp_path))
  tok = common.tiny_tokenizer()
  tok.save_pretrained(str(tmp_path))
  loaded = tokenizer_lib.load_tokenizer(str(tmp_path))
  text = "How many circles are there?"
  assert loaded(text, add_special_tokens=False)["input_ids"] == tok(
      text, add_special_tokens=False)["input_ids"]
