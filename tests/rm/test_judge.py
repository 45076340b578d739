"""The generative judge: P(yes) against the softmax of an independent full forward."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from cosmojax import models, rm
from tests import common

REQUESTS = ["How do I cook the car?", "How do I poison the neighbour?", "How do I fix it?"]
RESPONSES = ["Sure, here is how: first cook it slowly.", "I cannot help with that.", "No."]
YES, NO = ("yes", "Yes"), ("no", "No")


@pytest.fixture(scope="module")
def tok():
  return common.preference_tokenizer()


@pytest.fixture(scope="module")
def lm():
  # A large init scale makes the next-token distribution far from uniform, so reading the
  # wrong position or the wrong tokens would show.
  config = models.tiny_qwen2_config(vocab_size=256, initializer_range=0.3)
  return models.Qwen2ForCausalLM(config, rngs=nnx.Rngs(2))


def _reference(lm, tok, template):
  """P(yes) normalized and raw per row, from the full-forward logits of each unpadded prompt
  (tokenized by apply_chat_template itself), softmax in float64 on the host."""
  graphdef, state = nnx.split(lm)
  forward = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids))
  yes = [tok.convert_tokens_to_ids(t) for t in YES]
  no = [tok.convert_tokens_to_ids(t) for t in NO]
  normalized, raw, second_last = [], [], []
  for request, response in zip(REQUESTS, RESPONSES):
    text = template.format(prompt=request, response=response)
    ids = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                  add_generation_prompt=True)["input_ids"]
    logits = np.asarray(forward(state, np.asarray([ids], np.int32)), np.float64)[0]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    normalized.append(p[-1, yes].sum() / (p[-1, yes].sum() + p[-1, no].sum()))
    raw.append(p[-1, yes].sum())
    second_last.append(p[-2, yes].sum() / (p[-2, yes].sum() + p[-2, no].sum()))
  return np.array(normalized), np.array(raw), np.array(second_last)


def test_p_yes_matches_softmax_of_full_forward_at_last_prompt_position(lm, tok):
  judge = rm.GenerativeJudge(lm, tok)
  normalized, raw, second_last = _reference(lm, tok, rm.DEFAULT_TEMPLATE)
  kw = dict(yes_tokens=YES, no_tokens=NO, batch_size=4, length_buckets=(80,))  # 1 padding row
  got = judge(REQUESTS, RESPONSES, **kw)
  np.testing.assert_allclose(got, normalized, atol=1e-5)
  np.testing.assert_allclose(judge(REQUESTS, RESPONSES, normalize=False, **kw), raw,
                             atol=1e-5, rtol=1e-5)
  # The test can tell positions and rows apart.
  assert np.abs(normalized - second_last).max() > 0.05
  assert np.ptp(normalized) > 0.05 and np.ptp(raw) > 0.5 * raw.mean()
  # Batches of one row (other padding, other shapes) give the same values.
  np.testing.assert_allclose(judge(REQUESTS, RESPONSES, **dict(kw, batch_size=1)), got,
                             atol=1e-5)


def test_templates_and_answer_tokens_are_checked(lm, tok):
  judge = rm.GenerativeJudge(lm, tok)
  with pytest.raises(ValueError, match=r"unknown fields \['answer'\]"):
    judge(REQUESTS, RESPONSES, template="{prompt} {answer}")
  with pytest.raises(ValueError, match="names {reference} but row 0 has no reference"):
    judge(REQUESTS, RESPONSES, template="{prompt} {response} {reference}")
  with pytest.raises(ValueError, match="'maybe' is not a single known token"):
    judge(REQUESTS, RESPONSES, yes_tokens=("maybe",), length_buckets=(64,))
  with pytest.raises(ValueError, match="'yes no' is not a single known token"):
    judge(REQUESTS, RESPONSES, yes_tokens=("yes no",), length_buckets=(64,))
  assert rm.fill_template("{prompt}|{response}|{reference}", ["a{b}"], ["c"], ["d"]) == [
      "a{b}|c|d"]


def test_yes_probability_hand_computed():
  logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]]))  # p = logits' softmax exactly
  yes, no = np.array([1, 3]), np.array([0])
  assert float(rm.yes_probability(logits, yes, no, normalize=False)[0]) == pytest.approx(0.6)
  assert float(rm.yes_probability(logits, yes, no, normalize=True)[0]) == pytest.approx(0.6 / 0.7)
