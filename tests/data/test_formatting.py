"""Chat formatting: placeholders, loss masks, truncation, prompts."""

import numpy as np
import pytest
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from cosmojax import types
from cosmojax.data import formatting
from cosmojax.data import tokenizer as tokenizer_lib
from tests import common

IDS = tokenizer_lib.QwenTokenIds(0, 2, 1, 2, 3, 4, 5, 6)


def _formatter(max_length=512, tokenizer=None, **kwargs):
  return formatting.ChatFormatter(
      tokenizer or common.tiny_tokenizer(), common.tiny_image_processor(),
      max_length=max_length, **kwargs)


def _two_turn_example(sizes=((28, 84), (56, 56))):
  """user(image, text) / assistant / user(image, text) / assistant."""
  return types.Example(
      id="two-turns",
      task="count",
      messages=(
          types.user_message("How many circles?", 1),
          types.text_message("assistant", "The answer is three."),
          types.user_message("And squares?", 1),
          types.text_message("assistant", "I think two squares."),
      ),
      images=tuple(common.tiny_image(h, w, seed=h + w) for h, w in sizes),
  )


def _runs(mask):
  """[start, end) of the runs of ones of a 0/1 vector."""
  padded = np.concatenate([[0], mask, [0]])
  starts = np.flatnonzero(np.diff(padded) == 1)
  ends = np.flatnonzero(np.diff(padded) == -1)
  return list(zip(starts, ends))


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_loss_mask_covers_exactly_the_assistant_turns(kind):
  example = _two_turn_example()
  tok = common.tiny_tokenizer() if kind == "word" else tokenizer_lib.build_tokenizer(
      corpus=[m["content"] if isinstance(m["content"], str) else "" for m in example.messages],
      kind="bpe", vocab_size=300)
  out = _formatter(tokenizer=tok).sft(example)
  assert out.loss_mask.shape == out.input_ids.shape == out.attention_mask.shape
  runs = _runs(out.loss_mask)
  # Each assistant turn is one run that decodes to its text followed by <|im_end|>.
  assert [tok.decode(out.input_ids[s:e]) for s, e in runs] == [
      "The answer is three.<|im_end|>", "I think two squares.<|im_end|>"]
  # The token before each run ends the generation prompt "<|im_start|>assistant\n".
  for s, _ in runs:
    assert tok.decode(out.input_ids[:s]).endswith("<|im_start|>assistant\n")
  assert out.attention_mask.sum() == len(out.input_ids)


def test_image_placeholders_match_the_processor_grids():
  example = _two_turn_example(sizes=((28, 84), (100, 30)))
  out = _formatter().sft(example)
  ref = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=28 * 28 * 4)(
      images=list(example.images), return_tensors="np")
  np.testing.assert_array_equal(out.image_grid_thw, ref["image_grid_thw"])
  np.testing.assert_allclose(out.pixel_values, ref["pixel_values"], atol=1e-5)
  pads = _runs((out.input_ids == IDS.image_pad).astype(int))
  assert [e - s for s, e in pads] == [int(np.prod(g)) // 4 for g in ref["image_grid_thw"]]
  for s, e in pads:  # each run sits between <|vision_start|> and <|vision_end|>
    assert out.input_ids[s - 1] == IDS.vision_start and out.input_ids[e] == IDS.vision_end
  assert out.loss_mask[out.input_ids == IDS.image_pad].sum() == 0


def test_expansion_matches_string_level_expansion_of_transformers_processor():
  # What Qwen2_5_VLProcessor does: replace the k-th <|image_pad|> in the rendered text by
  # grid_k.prod() // merge**2 copies, then tokenize.
  example = _two_turn_example(sizes=((56, 28), (84, 84)))
  tok = common.tiny_tokenizer()
  formatter = _formatter()
  grids = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=28 * 28 * 4)(
      images=list(example.images), return_tensors="np")["image_grid_thw"]
  text = formatter.render(example.messages, add_generation_prompt=False)
  pieces = text.split("<|image_pad|>")
  expanded = pieces[0] + "".join(
      "<|image_pad|>" * (int(np.prod(g)) // 4) + piece for g, piece in zip(grids, pieces[1:]))
  expected = tok(expanded, add_special_tokens=False)["input_ids"]
  np.testing.assert_array_equal(formatter.sft(example).input_ids, expected)


@pytest.mark.torch
def test_placeholders_equal_the_vision_tower_output_length():
  torch = pytest.importorskip("torch")
  from transformers.models.qwen2_5_vl import configuration_qwen2_5_vl, modeling_qwen2_5_vl

  config = configuration_qwen2_5_vl.Qwen2_5_VLVisionConfig(
      depth=1, hidden_size=16, num_heads=2, intermediate_size=32, out_hidden_size=8,
      fullatt_block_indexes=[0], window_size=56)
  torch.manual_seed(0)
  tower = modeling_qwen2_5_vl.Qwen2_5_VisionTransformerPretrainedModel(config).eval()
  for sizes in [((28, 84), (56, 56)), ((100, 30), (11, 300))]:
    out = _formatter().sft(_two_turn_example(sizes))
    with torch.no_grad():
      embeds = tower(torch.from_numpy(out.pixel_values),
                     grid_thw=torch.from_numpy(out.image_grid_thw.astype(np.int64))).pooler_output
    assert embeds.shape[0] == int(np.sum(out.input_ids == IDS.image_pad))


def test_prompt_ends_with_generation_prompt_and_has_no_target():
  example = _two_turn_example()
  out = _formatter().prompt(example)
  tok = common.tiny_tokenizer()
  text = tok.decode(out.input_ids)
  assert text.endswith("And squares?<|im_end|>\n<|im_start|>assistant\n")
  assert "I think two squares." not in text and "The answer is three." in text
  assert out.loss_mask.sum() == 0
  assert len(out.image_grid_thw) == 2


def test_sft_needs_a_final_assistant_turn():
  example = types.Example(id="q", task="t", messages=(types.user_message("hi"),))
  with pytest.raises(ValueError, match="Example 'q': SFT needs a final assistant turn"):
    _formatter().sft(example)


def test_literal_image_token_in_text_is_an_error():
  example = types.Example(id="inj", task="t", messages=(
      types.user_message("look <|image_pad|>"), types.text_message("assistant", "no")))
  message = r"Example 'inj': the rendered chat has 1 <\|image_pad\|> tokens but the example has 0"
  with pytest.raises(ValueError, match=message):
    _formatter().sft(example)


def test_truncation_never_cuts_an_image_block():
  example = _two_turn_example()
  full = _formatter().sft(example)
  blocks = [(s - 1, e + 1) for s, e in _runs((full.input_ids == IDS.image_pad).astype(int))]
  kept_lengths, reasons = set(), set()
  for max_length in range(1, full.length + 2):
    formatter = _formatter(max_length=max_length)
    out = formatter.sft(example)
    inside = any(b0 < max_length < b1 for b0, b1 in blocks)
    no_target = full.loss_mask[:max_length].sum() == 0
    if max_length < full.length and (inside or no_target):
      assert out is None
      reason = "truncation_in_image" if inside else "no_target_after_truncation"
      assert formatter.drops.counts == {reason: 1}
      reasons.add(reason)
      assert "Example 'two-turns'" in formatter.drops.first_messages[0]
      continue
    assert out is not None and formatter.drops.total == 0
    kept_lengths.add(out.length)
    n = min(max_length, full.length)
    np.testing.assert_array_equal(out.input_ids, full.input_ids[:n])
    np.testing.assert_array_equal(out.loss_mask, full.loss_mask[:n])
    kept_images = sum(b1 <= n for _, b1 in blocks)
    assert len(out.image_grid_thw) == kept_images
    assert len(out.pixel_values) == int(np.prod(out.image_grid_thw, axis=1).sum())
    assert np.sum(out.input_ids == IDS.image_pad) * 4 == len(out.pixel_values)
  # Both kinds of drops happened, and some truncations kept only the first image.
  assert reasons == {"truncation_in_image", "no_target_after_truncation"}
  assert any(length <= blocks[1][0] for length in kept_lengths)


def test_long_prompts_are_dropped_and_counted():
  example = _two_turn_example()
  full = _formatter().prompt(example)
  formatter = _formatter(max_length=full.length - 1)
  assert formatter.prompt(example) is None
  assert formatter.drops.counts == {"prompt_too_long": 1}
  assert "dropped 1 examples (prompt_too_long: 1)" in formatter.drops.summary()
  assert _formatter(max_length=full.length).prompt(example) is not None


def test_too_many_images_are_dropped():
  formatter = _formatter(max_images_per_example=1)
  assert formatter.sft(_two_turn_example()) is None
  assert formatter.drops.counts == {"too_many_images": 1}


def test_image_paths_are_loaded(tmp_path):
  from PIL import Image

  image = common.tiny_image(40, 60)
  Image.fromarray(image).save(tmp_path / "a.png")
  by_path = types.Example(id="p", task="t", messages=(types.user_message("Describe", 1),),
                          images=(str(tmp_path / "a.png"),))
  by_array = types.Example(id="a", task="t", messages=(types.user_message("Describe", 1),),
                           images=(image,))
  np.testing.assert_array_equal(_formatter().prompt(by_path).pixel_values,
                                _formatter().prompt(by_array).pixel_values)
  (tmp_path / "b.png").write_bytes(b"broken")
  broken = types.Example(id="b", task="t", messages=(types.user_message("Describe", 1),),
                         images=(str(tmp_path / "b.png"),))
  with pytest.raises(ValueError, match=r"Example 'b': images\[0\] \(.*b.png\) cannot be decoded"):
    _formatter().prompt(broken)
