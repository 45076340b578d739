"""Tests of cosmojax.optim: schedules, the weight-decay mask, clipping, the non-finite guard."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cosmojax import optim


class _Tiny(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.embed = nnx.Embed(5, 4, rngs=rngs)
    self.proj = nnx.Linear(4, 3, rngs=rngs)
    self.final_norm = nnx.RMSNorm(3, rngs=rngs)


def _params():
  return nnx.state(_Tiny(nnx.Rngs(0)), nnx.Param)


def _count(opt_state) -> int:
  counts = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]
            if optim.param_path(path).endswith("count")]
  assert counts, "no step counter in the optimizer state"
  return int(counts[0])


@pytest.mark.parametrize("config, expected", [
    # Warmup 0 -> 1e-3 over 4 steps, then constant.
    (dict(learning_rate=1e-3, warmup_steps=4), {0: 0.0, 2: 5e-4, 4: 1e-3, 100: 1e-3}),
    # Cosine from step 2 to 6, end = 0.1: midpoint 0.1 + 0.9 * (1 + cos(pi/2)) / 2 = 0.55.
    (dict(learning_rate=1.0, schedule="cosine", warmup_steps=2, total_steps=6,
          final_lr_ratio=0.1), {1: 0.5, 2: 1.0, 4: 0.55, 6: 0.1, 50: 0.1}),
    (dict(learning_rate=1.0, schedule="linear", total_steps=10), {0: 1.0, 5: 0.5, 10: 0.0,
                                                                  20: 0.0}),
])
def test_schedules_match_hand_computed_values(config, expected):
  schedule = optim.learning_rate_schedule(config)
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr, abs=1e-7), step


def test_config_errors_name_the_problem():
  with pytest.raises(ValueError, match=r"unknown keys \['lr'\]"):
    optim.OptimizerConfig.from_mapping({"lr": 1e-3})
  with pytest.raises(KeyError, match="known: constant, cosine, linear"):
    optim.OptimizerConfig(schedule="exponential")
  with pytest.raises(ValueError, match="total_steps > warmup_steps"):
    optim.OptimizerConfig(schedule="cosine", warmup_steps=10, total_steps=10)
  with pytest.raises(ValueError, match="max_grad_norm"):
    optim.OptimizerConfig(max_grad_norm=0.0)


def test_decay_mask_excludes_norms_biases_and_vectors():
  mask = optim.decay_mask(_params())
  assert mask["proj"]["kernel"].get_value() is True
  assert mask["embed"]["embedding"].get_value() is True
  assert mask["proj"]["bias"].get_value() is False
  assert mask["final_norm"]["scale"].get_value() is False
  # A matrix under a norm-named key is excluded by name, not only by its rank.
  assert optim.decay_mask({"layer_norm": {"w": jnp.ones((2, 2))}}) == {"layer_norm": {"w": False}}


def test_weight_decay_only_on_masked_parameters():
  # Zero gradients: Adam's update is 0, so only decoupled decay moves the parameters:
  # p <- p - lr * wd * p on decayed leaves, unchanged elsewhere.
  params = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)}
  tx = optim.make_optimizer(dict(learning_rate=0.1, weight_decay=0.5, max_grad_norm=None))
  grads = jax.tree.map(jnp.zeros_like, params)
  new, _, metrics = optim.apply_gradients(tx, params, tx.init(params), grads, jnp.float32(1.0))
  np.testing.assert_allclose(new["kernel"], 2.0 * (1 - 0.1 * 0.5), rtol=1e-6)
  np.testing.assert_array_equal(new["bias"], params["bias"])
  assert not bool(metrics["skipped"])


def test_gradients_are_clipped_to_the_global_norm():
  # g = (3, 4): norm 5, clipped to norm 1 -> (0.6, 0.8); Adam's first moment after one step
  # is (1 - b1) * clipped g.
  params = {"w": jnp.zeros((2,))}
  tx = optim.make_optimizer(dict(learning_rate=1e-3, max_grad_norm=1.0, b1=0.9))
  grads = {"w": jnp.array([3.0, 4.0])}
  _, opt_state, metrics = optim.apply_gradients(tx, params, tx.init(params), grads,
                                                jnp.float32(0.0))
  mu = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]
        if "mu" in optim.param_path(path)]
  np.testing.assert_allclose(mu[0], 0.1 * np.array([0.6, 0.8]), rtol=1e-6)
  assert float(metrics["grad_norm"]) == pytest.approx(5.0)


def test_frozen_parameters_get_no_update_no_decay_and_no_share_of_the_clip():
  # proj is frozen: it keeps its values under a large gradient and weight decay, and holds no
  # Adam moments. embed's gradient (norm 2) is clipped to 1 on its own norm: with the frozen
  # gradient (norm 10) counted too, Adam's first moment would be 1/sqrt(104) of g, not 1/2.
  params = _params()
  tx = optim.make_optimizer(dict(learning_rate=0.1, weight_decay=0.5, max_grad_norm=1.0,
                                 b1=0.9, frozen=("^proj/",)))
  grads = jax.tree.map(jnp.zeros_like, params)
  grads["embed"]["embedding"].set_value(jnp.full((5, 4), 2.0 / math.sqrt(20)))
  grads["proj"]["kernel"].set_value(jnp.full((4, 3), 10.0 / math.sqrt(12)))
  opt_state = tx.init(params)
  new, opt_state, _ = optim.apply_gradients(tx, params, opt_state, grads, jnp.float32(0.0))
  np.testing.assert_array_equal(new["proj"]["kernel"].get_value(),
                                params["proj"]["kernel"].get_value())
  np.testing.assert_array_equal(new["proj"]["bias"].get_value(),
                                params["proj"]["bias"].get_value())
  assert not np.allclose(new["embed"]["embedding"].get_value(),
                         params["embed"]["embedding"].get_value())
  moments = {optim.param_path(path): leaf
             for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]}
  assert not any("proj" in name for name in moments), sorted(moments)
  mu = [leaf for name, leaf in moments.items() if "mu" in name and "embed" in name]
  np.testing.assert_allclose(mu[0], 0.1 * 0.5 * grads["embed"]["embedding"].get_value(),
                             rtol=1e-6)


def test_frozen_patterns_must_match_a_parameter_and_be_a_tuple():
  tx = optim.make_optimizer(dict(learning_rate=0.1, frozen=("^vision/",)))
  with pytest.raises(ValueError, match=r"frozen patterns \['\^vision/'\] match no parameter"):
    tx.init(_params())
  with pytest.raises(ValueError, match="frozen is a string"):
    optim.OptimizerConfig.from_mapping({"frozen": "^visual/"})


@pytest.mark.parametrize("bad", ["nan_loss", "inf_grad", "nan_grad"])
def test_nonfinite_step_is_skipped_and_leaves_the_state_unchanged(bad):
  params = _params()
  tx = optim.make_optimizer(dict(learning_rate=1e-2, weight_decay=0.1, warmup_steps=2))
  opt_state = tx.init(params)
  step = jax.jit(lambda p, s, g, l: optim.apply_gradients(tx, p, s, g, l))
  grads = jax.tree.map(jnp.ones_like, params)
  # One good step first, so that the state is not the initial one.
  params, opt_state, metrics = step(params, opt_state, grads, jnp.float32(1.0))
  assert not bool(metrics["skipped"]) and _count(opt_state) == 1

  loss = jnp.float32(math.nan if bad == "nan_loss" else 1.0)
  if bad != "nan_loss":
    value = math.inf if bad == "inf_grad" else math.nan
    grads = jax.tree.map(jnp.ones_like, params)
    grads["proj"]["kernel"][...] = grads["proj"]["kernel"][...].at[0, 0].set(value)
  new_params, new_opt_state, metrics = step(params, opt_state, grads, loss)
  assert bool(metrics["skipped"])
  assert _count(new_opt_state) == 1  # the step counter did not advance
  for old, new in zip(jax.tree.leaves((params, opt_state)), jax.tree.leaves((new_params,
                                                                              new_opt_state))):
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))

  # A finite step after the skipped one goes through.
  grads = jax.tree.map(jnp.ones_like, params)
  after, after_state, metrics = step(new_params, new_opt_state, grads, jnp.float32(1.0))
  assert not bool(metrics["skipped"]) and _count(after_state) == 2
  assert not np.array_equal(after["proj"]["kernel"][...], params["proj"]["kernel"][...])


def test_skip_nonfinite_update_selects_between_given_states():
  old = ({"w": jnp.zeros(2)}, {"m": jnp.zeros(2)})
  new = ({"w": jnp.ones(2)}, {"m": jnp.ones(2)})
  grads = {"w": jnp.ones(2)}
  p, s, m = optim.skip_nonfinite_update(*new, *old, jnp.float32(0.5), grads)
  np.testing.assert_array_equal(p["w"], 1.0)
  np.testing.assert_array_equal(s["m"], 1.0)
  assert float(m["grad_norm"]) == pytest.approx(math.sqrt(2)) and not bool(m["skipped"])
  p, s, m = optim.skip_nonfinite_update(*new, *old, jnp.float32(math.inf), grads)
  np.testing.assert_array_equal(p["w"], 0.0)
  np.testing.assert_array_equal(s["m"], 0.0)
  assert bool(m["skipped"])
