"""Qwen2 text LM against transformers' Qwen2ForCausalLM (float32, CPU), tied and untied."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cosmojax import models
from tests import common

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

TOL = 1e-4


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def pair(request, tmp_path_factory):
  path = common.save_tiny_hf_model(common.tiny_qwen2_hf_config(tie_word_embeddings=request.param),
                                   tmp_path_factory.mktemp("qwen2"), seed=1)
  return common.load_hf_model(path), models.from_pretrained(path)


def test_logits_match_transformers(pair):
  hf, model = pair
  assert isinstance(model, models.Qwen2ForCausalLM)
  ids = np.random.RandomState(0).randint(0, common.TINY_VOCAB, (2, 10))
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
  ours = np.asarray(model(ids))
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(ours, ref, atol=TOL)


def test_lm_head_matrix_and_hidden_states_give_the_logits(pair):
  hf, model = pair
  ids = np.random.RandomState(1).randint(0, common.TINY_VOCAB, (1, 6))
  w = model.lm_head_matrix()
  assert w.shape == (64, common.TINY_VOCAB)
  np.testing.assert_array_equal(w, hf.lm_head.weight.detach().numpy().T)
  h = model.hidden_states(ids)
  np.testing.assert_allclose(h @ w, model(ids), atol=1e-5)


def test_left_padded_prefill_and_decode_match_generate(pair):
  hf, model = pair
  ids, mask = common.left_pad([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]])
  steps = 4
  with torch.no_grad():
    gen = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      max_new_tokens=steps, do_sample=False, output_logits=True,
                      return_dict_in_generate=True, pad_token_id=0)
  new = gen.sequences[:, ids.shape[1]:].numpy()
  ref = np.stack([l.numpy() for l in gen.logits], axis=1)
  graphdef, state = nnx.split(model)

  @jax.jit
  def decode(state, ids, mask, new):  # a lax.while_loop, as the rollout engine runs it
    m = nnx.merge(graphdef, state)
    first, cache = m.prefill(ids, m.init_cache(ids.shape[0], 16), mask)
    out = jnp.zeros((ids.shape[0], steps, first.shape[-1]), jnp.float32).at[:, 0].set(first)

    def body(carry):
      i, cache, out = carry
      logits, cache = m.decode_step(new[:, i - 1], cache)
      return i + 1, cache, out.at[:, i].set(logits)

    return jax.lax.while_loop(lambda c: c[0] < steps, body, (1, cache, out))[2]

  np.testing.assert_allclose(decode(state, ids, mask, new), ref, atol=TOL)
  # The full forward over prompt + generated tokens agrees with the cached logits.
  full = model(np.concatenate([ids, new], 1), np.concatenate([mask, np.ones_like(new)], 1))
  np.testing.assert_allclose(full[:, ids.shape[1] - 1:-1], ref, atol=TOL)
