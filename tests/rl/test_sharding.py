"""Jit and a multi-device mesh (8 fake CPU devices, batch over the data axis) give the same
values as a single device, for advantages, the loss and its gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cosmojax.parallel.axes import DATA
from cosmojax.rl import (
    AdvantageConfig,
    PolicyLossConfig,
    compute_advantages,
    contiguous_group_ids,
    multiobjective_pg_loss_reference,
    reinforce_pp_token_advantages,
)

B, T, D, V = 8, 4, 6, 10


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py forces 8 fake CPU devices)")
  return Mesh(np.array(jax.devices()[:8]), (DATA,))


def _batch(rng):
  rewards = rng.choice([0.0, 1.0, 0.5, np.nan], size=(B, 2)).astype(np.float32)
  rewards[0] = [1.0, np.nan]  # Keep some signal and routing in every draw.
  return dict(
      rewards=rewards,
      ids=np.asarray(contiguous_group_ids(B, 4)),
      hidden=rng.normal(size=(B, T, D)).astype(np.float32),
      lm_head=(rng.normal(size=(D, V)) * 0.5).astype(np.float32),
      targets=rng.integers(0, V, (B, T)).astype(np.int32),
      old=rng.normal(-2.3, 0.2, (B, T)).astype(np.float32),
      ref=rng.normal(-2.3, 0.2, (B, T)).astype(np.float32),
      mask=(rng.random((B, T)) < 0.8).astype(np.float32),
  )


def _step(x, config_adv, config_loss):
  """Advantages then loss and gradients: the maths of one learner step."""
  adv = compute_advantages(x["rewards"], x["ids"], jnp.array([1.0, 2.0]), config_adv,
                           num_groups=B // 4)
  mask = x["mask"] * adv.sample_mask[:, None]

  def loss_fn(hidden, lm_head):
    return multiobjective_pg_loss_reference(
        hidden, lm_head, x["targets"], x["old"], adv.advantages, adv.weights, mask, config_loss,
        ref_logp_bt=x["ref"],
    )

  (loss, diag), grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
      x["hidden"], x["lm_head"]
  )
  token = reinforce_pp_token_advantages(x["rewards"], jnp.array([1.0, 2.0]), x["mask"],
                                        kl_bt=x["old"] - x["ref"], kl_coef=0.1)
  return adv.advantages, loss, diag, grads, token.advantages


@pytest.mark.parametrize(
    "config_adv, config_loss",
    [
        (AdvantageConfig("grpo", "normalize_then_sum", dynamic_sampling=True),
         PolicyLossConfig(loss_type="cpgd", kl_coef=0.01, entropy_coef=0.01)),
        (AdvantageConfig("reinforce_pp", "sum_then_normalize"),
         PolicyLossConfig.preset("gspo", aggregation="seq-mean-token-sum-norm")),
    ],
)
def test_mesh_matches_single_device(mesh, config_adv, config_loss):
  x = _batch(np.random.default_rng(0))
  single = _step({k: jnp.asarray(v) for k, v in x.items()}, config_adv, config_loss)

  def place(name, value):
    spec = P() if name == "lm_head" else P(DATA, *([None] * (value.ndim - 1)))
    return jax.device_put(value, NamedSharding(mesh, spec))

  sharded_inputs = {k: place(k, v) for k, v in x.items()}
  assert len(sharded_inputs["hidden"].sharding.device_set) == 8
  sharded = jax.jit(_step, static_argnums=(1, 2))(sharded_inputs, config_adv, config_loss)
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
  assert np.isfinite(np.asarray(single[1]))
