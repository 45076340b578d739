"""Step segmentation, prompt + partial-response batches, and re-prefill continuation."""

from __future__ import annotations

import math

import jax
import pytest

from cosmojax import inference
from tests.inference.conftest import LENGTH, ONESHOT_TOKENS, SAMPLED_STEP, prompt_ids

EOS = 2


def _ids(tokenizer, text):
  return tokenizer.encode(text, add_special_tokens=False)


def test_split_step_cuts_after_the_first_delimiter(tokenizer):
  ids = _ids(tokenizer, "The answer is red\nblue\n")
  sample = inference.split_step(ids, tokenizer, SAMPLED_STEP, (EOS,))
  assert sample.text == "The answer is red\n"
  assert list(sample.token_ids) == _ids(tokenizer, "The answer is red\n")
  assert sample.ending == "delimiter"


def test_split_step_final_eos_and_budget(tokenizer):
  final = inference.split_step(_ids(tokenizer, "<answer> red </answer> no"), tokenizer,
                               SAMPLED_STEP, (EOS,))
  assert (final.text, final.ending) == ("<answer> red </answer>", "final")
  eos = inference.split_step(_ids(tokenizer, "red blue") + [EOS], tokenizer, SAMPLED_STEP,
                             (EOS,))
  assert (eos.text, eos.ending, list(eos.token_ids)) == ("red blue", "eos",
                                                          _ids(tokenizer, "red blue"))
  budget = inference.split_step(_ids(tokenizer, "red blue"), tokenizer, SAMPLED_STEP, (EOS,))
  assert (budget.text, budget.ending) == ("red blue", "budget")


def test_split_step_finds_a_delimiter_spelled_with_other_tokens(tokenizer):
  # "is r" encodes to [is, " ", r]; the model wrote [is, " ", red]: the device stop sequence
  # cannot match, the host cut ends the step after "red".
  config = inference.StepConfig(delimiters=("is r",), final_delimiters=())
  sample = inference.split_step(_ids(tokenizer, "The answer is red blue"), tokenizer, config,
                                (EOS,))
  assert (sample.text, sample.ending) == ("The answer is red", "delimiter")


def test_split_step_token_sequence_delimiter(tokenizer):
  red_blue = tuple(_ids(tokenizer, "red blue"))  # (red, " ", blue)
  config = inference.StepConfig(delimiters=(red_blue,), final_delimiters=())
  sample = inference.split_step(_ids(tokenizer, "yes red red blue no"), tokenizer, config,
                                (EOS,))
  assert sample.text == "yes red red blue"
  assert config.sampling(tokenizer, 2).stop_sequences == (red_blue,)


def test_step_config_sampling_and_validation(tokenizer):
  sampling = SAMPLED_STEP.sampling(tokenizer, 3)
  assert sampling.group_size == 3 and sampling.max_new_tokens == SAMPLED_STEP.max_step_tokens
  assert sampling.stop_sequences == (tuple(_ids(tokenizer, "\n")),
                                     tuple(_ids(tokenizer, "</answer>")))
  assert sampling.eos_ids == (EOS, 0)  # <|im_end|> and pad
  with pytest.raises(ValueError, match="delimiters\\[0\\] is an empty string"):
    inference.StepConfig(delimiters=("",))
  with pytest.raises(ValueError, match="token delimiter"):
    inference.StepConfig(final_delimiters=((),))
  with pytest.raises(ValueError, match="max_step_tokens"):
    inference.StepConfig(max_step_tokens=0)


def test_edited_step_ends_the_response_only_with_a_final_delimiter(tokenizer):
  assert inference.edited_step("red\n", tokenizer, SAMPLED_STEP).ending == "delimiter"
  edit = inference.edited_step("<answer> no </answer>", tokenizer, SAMPLED_STEP)
  assert edit.ending == "final"
  assert list(edit.token_ids) == _ids(tokenizer, "<answer> no </answer>")


def test_prompt_builder_rows_are_prompt_then_response(prompts, tokenizer, examples):
  responses = [_ids(tokenizer, "red"), [], _ids(tokenizer, "blue green yes")]
  (batch, n), = prompts.batches(prompts.format(examples), responses)
  assert n == 3 and batch.input_ids.shape == (4, LENGTH)
  for i, (example, response) in enumerate(zip(examples, responses)):
    row = prompt_ids(tokenizer, example) + response
    assert batch.input_ids[i, LENGTH - len(row):].tolist() == row
    assert batch.attention_mask[i].sum() == len(row)
  assert batch.example_mask.tolist() == [True, True, True, False]


def test_prompt_builder_rejects_rows_longer_than_the_largest_bucket(prompts, tokenizer,
                                                                    examples):
  too_long = _ids(tokenizer, "red ") * LENGTH
  with pytest.raises(ValueError, match="largest length bucket"):
    prompts.batches(prompts.format(examples[:1]), [too_long])


def test_greedy_steps_continue_exactly_as_one_uninterrupted_decode(
    engine, prompts, examples, oneshot_greedy, greedy_step, tokenizer):
  """Re-prefilling prompt + partial response each step reproduces the KV-cache decode of the
  whole response: the steps concatenate to a prefix of the one-shot greedy completion."""
  config = inference.InterventionConfig(greedy_step, threshold=-math.inf)
  results = inference.guided_generate(engine, prompts, examples, config, None,
                                      jax.random.key(0))
  endings = set()
  for result, reference in zip(results, oneshot_greedy):
    ids = [i for step in result.steps for i in step.token_ids]
    assert ids == list(result.token_ids)
    assert ids == reference[:len(ids)], result.steps
    assert result.response == tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(step.text for step in result.steps) == result.response
    assert all(math.isnan(step.score) for step in result.steps)
    endings |= {step.ending for step in result.steps}
    if result.stop_reason == "max_steps":
      assert len(result.steps) == 3 and len(ids) <= ONESHOT_TOKENS
  assert "delimiter" in endings  # the fixture's delimiter cut at least one step short
  # Example 0's first step ends at the first token whose prefix text holds the delimiter (at
  # the latest its third token, the one the delimiter was taken from).
  reference, delimiter = oneshot_greedy[0], greedy_step.delimiters[0]
  end = next(i for i in range(1, 4) if delimiter in tokenizer.decode(reference[:i]))
  assert results[0].steps[0].token_ids == tuple(reference[:end])


def test_deliberate_takes_a_tokenizer_for_default_prompt_batches(engine, tokenizer, examples,
                                                                 greedy_step, oneshot_greedy):
  config = inference.InterventionConfig(greedy_step, threshold=-math.inf)
  results = inference.deliberate(engine, tokenizer, examples[:1], config, None,
                                 jax.random.key(0))
  ids = list(results[0].token_ids)
  assert ids and ids == oneshot_greedy[0][:len(ids)]
  with pytest.raises(TypeError, match="PromptBuilder or a tokenizer"):
    inference.deliberate(engine, object(), examples, config, None, jax.random.key(0))
