"""The suite's own tokenizer covers its closed vocabulary with one token per word."""

from __future__ import annotations

import pytest

from cosmojax.data import synthetic
from cosmojax.data import synthetic_lexicon as lex
from cosmojax.data import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def tok():
  return synthetic.build_suite_tokenizer()


def test_every_vocabulary_unit_is_one_token(tok):
  for unit in sorted(lex.suite_vocabulary()):
    assert len(tok.encode(unit, add_special_tokens=False)) == 1, unit
    assert len(tok.encode(" " + unit, add_special_tokens=False)) == 1, unit
  for tag in synthetic.TARGET_TAGS:
    assert len(tok.encode(tag, add_special_tokens=False)) == 1, tag
  assert tok.unk_token_id is None or tok.unk_token_id not in tok.encode(" ".join(lex.REFUSALS))


def test_suite_texts_round_trip_and_stay_short(tok):
  longest = 0
  for task in synthetic.TASK_NAMES:
    for e in synthetic.generate(task, "eval", 10):
      for text in (e.prompt_text, e.target):
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
      # Words are single tokens and numbers at most one per digit: no longer than its units.
      n_tokens = len(tok.encode(e.target, add_special_tokens=False))
      assert n_tokens <= synthetic.text_length(e.target)
      longest = max(longest, n_tokens)
  assert longest <= 50


def test_chat_template_saves_and_loads(tok, tmp_path):
  example = synthetic.make_example("count", "train", 0)
  text = tok.apply_chat_template(list(example.messages), tokenize=False)
  assert "<|vision_start|><|image_pad|><|vision_end|>" in text
  assert text.endswith(f"{example.target}<|im_end|>\n")
  tok.save_pretrained(tmp_path)
  loaded = tokenizer_lib.load_tokenizer(str(tmp_path))
  assert loaded.encode(text) == tok.encode(text)
  again = synthetic.build_suite_tokenizer()
  assert again.get_vocab() == tok.get_vocab()
