"""Tests for the shared record schema."""

import numpy as np
import pytest

from cosmojax import types


def _image():
  return np.zeros((28, 28, 3), np.uint8)


def test_example_properties():
  ex = types.Example(
      id="ex1",
      task="count",
      messages=(types.user_message("How many circles?", num_images=1),
                types.text_message("assistant", "<answer>3</answer>")),
      images=(_image(),),
      ground_truth="3",
      answer_type="number",
  )
  assert ex.prompt_text == "How many circles?"
  assert ex.target == "<answer>3</answer>"
  assert len(ex.prompt_messages) == 1


def test_image_count_mismatch_names_the_example():
  with pytest.raises(ValueError, match=r"Example 'bad': 1 image parts in messages but 0 images"):
    types.Example(id="bad", task="t", messages=(types.user_message("q", num_images=1),))


def test_unknown_role_names_the_message():
  with pytest.raises(ValueError, match=r"messages\[0\].role is 'robot'"):
    types.Example(id="x", task="t", messages=({"role": "robot", "content": "hi"},))
