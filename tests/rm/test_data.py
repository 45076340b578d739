"""The scored-sequence format and static-shape collation of reward-model data."""

from __future__ import annotations

import numpy as np
import pytest

from cosmojax import rm, types
from cosmojax.data import BatchSpec
from tests import common


@pytest.fixture(scope="module")
def tok():
  return common.preference_tokenizer()


def _ids(tok, text):
  return tok(text, add_special_tokens=False)["input_ids"]


def test_sequence_is_chat_prompt_then_response_and_im_end(tok):
  encoder = rm.SequenceEncoder(tok, 128)
  [(ids, response_mask)] = encoder.sequences(["How do I cook the car?"], ["Sure, here is how."])
  want = ("<|im_start|>user\nHow do I cook the car?<|im_end|>\n<|im_start|>assistant\n"
          "Sure, here is how.<|im_end|>")
  assert list(ids) == _ids(tok, want)
  assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
  n_response = len(_ids(tok, "Sure, here is how.<|im_end|>"))
  np.testing.assert_array_equal(response_mask, np.arange(len(ids)) >= len(ids) - n_response)
  [prompt] = encoder.prompts(["How do I cook the car?"])
  assert list(prompt) == _ids(tok, want[:want.index("Sure")])


def test_image_parts_are_dropped_and_long_rows_cut_on_the_left(tok):
  encoder = rm.SequenceEncoder(tok, 128)
  with_image = (types.user_message("How do I cook the car?", num_images=1),)
  plain = encoder.sequences(["How do I cook the car?"], ["No."])[0][0]
  np.testing.assert_array_equal(encoder.sequences([with_image], ["No."])[0][0], plain)
  short = rm.SequenceEncoder(tok, 10)
  ids, mask = short.sequences(["How do I cook the car?"], ["No."])[0]
  np.testing.assert_array_equal(ids, plain[-10:])
  assert mask.sum() == len(_ids(tok, "No.<|im_end|>"))


def test_prompts_must_end_with_a_user_turn_and_responses_be_strings(tok):
  encoder = rm.SequenceEncoder(tok, 64)
  with pytest.raises(ValueError, match="must end with a user turn"):
    encoder.sequences([(types.text_message("assistant", "hi"),)], ["x"])
  with pytest.raises(TypeError, match="response 1 is NoneType"):
    encoder.sequences(["a", "b"], ["x", None])


def test_collate_pairs_and_pointwise_shapes_and_masks():
  spec = BatchSpec(4, (8, 16))
  chosen = [np.array([3, 4, 5], np.int32), np.array([6] * 9, np.int32)]
  rejected = [np.array([7], np.int32), np.array([8, 9], np.int32)]
  batch = rm.collate_pairs(chosen, rejected, [0.5, 0.0], spec, pad_id=0)
  assert batch.chosen_ids.shape == (4, 16)  # 9 tokens -> the 16 bucket
  np.testing.assert_array_equal(batch.chosen_ids[0, :4], [3, 4, 5, 0])
  np.testing.assert_array_equal(batch.rejected_mask.sum(1), [1, 2, 0, 0])
  np.testing.assert_array_equal(batch.pair_mask, [True, True, False, False])
  np.testing.assert_array_equal(batch.margin, [0.5, 0.0, 0.0, 0.0])
  rows = [(np.array([1, 2, 3], np.int32), np.array([0, 1, 1], bool))]
  point = rm.collate_pointwise(rows, [1.0], spec, pad_id=0)
  assert point.input_ids.shape == (4, 8)
  np.testing.assert_array_equal(point.response_mask[0], [0, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(point.example_mask, [True, False, False, False])
  with pytest.raises(ValueError, match="label 0 is 2"):
    rm.collate_pointwise(rows, [2], spec, pad_id=0)
  with pytest.raises(ValueError, match="exceeds the largest length bucket"):
    rm.collate_pairs([np.ones(17, np.int32)], rejected[:1], [0.0], spec, pad_id=0)
  ids, mask = rm.pad_rows([np.array([5, 6])], 2, 4, 0, left=True)
  np.testing.assert_array_equal(ids, [[0, 0, 5, 6], [0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 0, 0]])
