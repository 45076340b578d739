"""Sampling maths, stop sequences and scoring helpers against hand-computed cases and NumPy."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosmojax import rl
from cosmojax.rollout import sampling, scoring

# Jitted once each: eager calls would compile every primitive separately.
_sample = jax.jit(sampling.sample_tokens,
                  static_argnames=("greedy", "top_k", "use_top_p", "suppressed_ids"))
_inverse_cdf = jax.jit(sampling.inverse_cdf, static_argnames="block")


@pytest.mark.parametrize("block", [2, 3, 128])
def test_inverse_cdf_by_hand(block):
  # Unnormalised masses [0, 1, 0, 3]: u * 4 in [0, 1) -> token 1, [1, 4) -> token 3; the
  # zero-mass tokens 0 and 2 are never returned.
  p = jnp.tile(jnp.array([[0.0, 1.0, 0.0, 3.0]]), (6, 1))
  u = jnp.array([0.0, 0.2, 0.2499, 0.25, 0.7, 1.0 - 2**-24])
  got = _inverse_cdf(p, u, block=block)
  np.testing.assert_array_equal(got, [1, 1, 1, 3, 3, 3])


def test_inverse_cdf_never_overshoots_to_a_zero_mass_tail():
  # u -> 1 with trailing zero-mass tokens (e.g. suppressed ids): the last positive token.
  p = jnp.array([[0.5, 0.25, 0.25, 0.0, 0.0]] * 2)
  got = _inverse_cdf(p, jnp.array([1.0, 0.99999994]), block=2)
  np.testing.assert_array_equal(got, [2, 2])


def test_sample_frequencies_match_the_tempered_softmax():
  rng = np.random.default_rng(0)
  z = rng.normal(size=12).astype(np.float32) * 2
  n, temperature = 40000, 0.7
  tokens, logp = _sample(jax.random.key(3), jnp.tile(z, (n, 1)), temperature,
                                        1.0, greedy=False, top_k=0, use_top_p=False)
  p = np.exp(z / temperature - np.max(z / temperature))
  p /= p.sum()
  freq = np.bincount(np.asarray(tokens), minlength=12) / n
  np.testing.assert_array_less(np.abs(freq - p), 4.5 * np.sqrt(p * (1 - p) / n) + 1e-3)
  np.testing.assert_allclose(logp, np.log(p)[np.asarray(tokens)], atol=1e-5)


def _numpy_kept_set(z, temperature, top_k, top_p):
  """Independent top-k then top-p set of one row (no ties in random logits)."""
  z = z / temperature
  order = np.argsort(-z)
  if top_k:
    order = order[:top_k]
  p = np.exp(z[order] - z[order].max())
  p /= p.sum()
  before = np.cumsum(p) - p
  return set(order[before < top_p].tolist()), z


@pytest.mark.parametrize("top_k,top_p", [(0, 0.6), (5, 1.0), (7, 0.8)])
def test_top_k_top_p_samples_lie_in_the_numpy_set_with_renormalised_logprobs(top_k, top_p):
  rng = np.random.default_rng(1)
  rows, v, temperature = 16, 40, 0.8
  z = rng.normal(size=(rows, v)).astype(np.float32) * 2
  sample = jax.jit(jax.vmap(functools.partial(
      sampling.sample_tokens, logits_nv=jnp.asarray(z), temperature=temperature, top_p=top_p,
      greedy=False, top_k=top_k, use_top_p=top_p < 1)))
  tokens, logp = sample(jax.random.split(jax.random.key(0), 300))  # [300, rows]
  filtered = np.asarray(sampling.filter_logits(jnp.asarray(z), temperature, top_p, top_k=top_k,
                                               use_top_p=top_p < 1))
  for r in range(rows):
    kept, zr = _numpy_kept_set(z[r], temperature, top_k, top_p)
    assert set(np.nonzero(np.isfinite(filtered[r]))[0].tolist()) == kept
    seen = set(np.asarray(tokens[:, r]).tolist())
    assert seen <= kept
    assert len(seen) > 1 or len(kept) == 1  # it does sample, not just take the argmax
    idx = sorted(kept)
    log_norm = np.log(np.sum(np.exp(zr[idx] - zr.max()))) + zr.max()
    np.testing.assert_allclose(logp[:, r], zr[np.asarray(tokens[:, r])] - log_norm, atol=1e-5)


def test_greedy_takes_the_first_argmax_and_its_temperature_one_logprob():
  z = jnp.array([[0.0, 2.0, 2.0, 1.0], [3.0, -1.0, 0.0, 0.5]])
  tokens, logp = _sample(jax.random.key(0), z, 0.3, 0.5, greedy=True, top_k=0,
                                        use_top_p=False)
  np.testing.assert_array_equal(tokens, [1, 0])
  np.testing.assert_allclose(logp, jax.nn.log_softmax(z)[jnp.arange(2), tokens], atol=1e-6)


def test_suppressed_ids_are_never_sampled_nor_counted():
  z = jnp.tile(jnp.array([[5.0, 0.0, 0.0, 0.0]]), (500, 1))
  tokens, logp = _sample(jax.random.key(1), z, 1.0, 1.0, greedy=False, top_k=0,
                                        use_top_p=False, suppressed_ids=(0,))
  assert 0 not in np.asarray(tokens)
  np.testing.assert_allclose(logp, np.log(1 / 3), atol=1e-6)
  greedy, _ = _sample(jax.random.key(1), z[:1], 1.0, 1.0, greedy=True, top_k=0,
                                     use_top_p=False, suppressed_ids=(0,))
  assert int(greedy[0]) == 1


def test_stop_sequences_match_the_tail_by_hand():
  table = sampling.stop_table([(5,), (7, 8, 9)])
  np.testing.assert_array_equal(table, [[-2, -2, 5], [7, 8, 9]])
  tail = sampling.empty_tail(3, 3)
  hits = []
  for step in ([8, 7, 5], [9, 8, 1], [1, 9, 2]):
    tail = sampling.push_tail(tail, jnp.array(step))
    hits.append(np.asarray(sampling.ends_with_stop(tail, table)).tolist())
  # Row 0: 8, 9, 1; row 1: 7, 8, 9 (stops at step 3); row 2: 5 (step 1), 1, 2.
  assert hits == [[False, False, True], [False, False, False], [False, True, False]]
  with pytest.raises(ValueError, match="negative"):
    sampling.stop_table([(3, -1)])


def test_per_sample_image_embeds_by_hand():
  img = 9
  # Prompt 0 holds 2 image tokens (rows 0, 1), prompt 1 none, prompt 2 one (row 2).
  ids = jnp.array([[img, 1, img], [1, 2, 3], [4, img, 5]])
  embeds = jnp.arange(4.0)[:, None] * jnp.ones((1, 2))  # rows 0..2 valid, row 3 padding
  got = jax.jit(scoring.per_sample_image_embeds, static_argnums=(2, 3))(embeds, ids, 2, img)
  assert got.shape == (8, 2)
  # Samples 0, 1 (prompt 0): rows 0, 1 each; samples 4, 5 (prompt 2): row 2 each.
  np.testing.assert_array_equal(got[:6, 0], [0, 1, 0, 1, 2, 2])


def test_completion_logprobs_match_the_rl_reference():
  rng = np.random.default_rng(2)
  h = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, 11)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 11, (2, 5)))
  for temperature in (1.0, 0.6):
    ref, _ = rl.token_logprobs_reference(h, w, y, temperature=temperature)
    np.testing.assert_allclose(scoring.completion_logprobs(h, w, y, temperature), ref,
                               atol=1e-5)
