"""Tests for meshes and logical-to-mesh sharding (8 fake CPU devices, tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from cosmojax.parallel import axes, mesh as mesh_lib, sharding


def test_mesh_shape_fills_the_free_axis():
  assert mesh_lib.mesh_shape(8, data=2, fsdp=-1, tensor=2) == (2, 2, 2)
  assert mesh_lib.mesh_shape(8) == (1, 8, 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(data=3, fsdp=-1), "not a multiple of 3"),
    (dict(data=-1, fsdp=-1), "at most one axis may be -1"),
    (dict(data=2, fsdp=2, tensor=1), "do not multiply"),
    (dict(data=0), "sizes are >= 1"),
])
def test_mesh_shape_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mesh_lib.mesh_shape(8, **kwargs)


def test_mesh_from_config_rejects_unknown_keys():
  with pytest.raises(ValueError, match=r"unknown keys \['model'\]"):
    mesh_lib.mesh_from_config({"model": 2})


def test_logical_to_mesh_spec_follows_rules():
  rules = ((axes.EMBED, axes.FSDP), (axes.MLP, axes.TENSOR), (axes.BATCH, (axes.DATA, axes.FSDP)))
  assert sharding.logical_to_mesh_spec((axes.EMBED, axes.MLP), rules) == P("fsdp", "tensor")
  assert sharding.logical_to_mesh_spec((axes.BATCH, None), rules) == P(("data", "fsdp"), None)
  # A mesh axis shards at most one dimension: the second use is replicated.
  assert sharding.logical_to_mesh_spec((axes.EMBED, axes.EMBED), rules) == P("fsdp", None)
  with pytest.raises(KeyError, match="no sharding rule for logical axis 'bogus'"):
    sharding.logical_to_mesh_spec(("bogus",), rules)


def test_logical_to_mesh_spec_drops_axes_that_do_not_divide():
  mesh = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
  spec = sharding.logical_to_mesh_spec((axes.EMBED, axes.MLP), shape=(6, 3), mesh=mesh)
  assert spec == P("fsdp", None)  # 3 is not divisible by tensor=2
  spec = sharding.logical_to_mesh_spec((axes.BATCH,), shape=(2,), mesh=mesh)
  assert spec == P("data")  # 2 splits over data but not over data x fsdp


class _Tiny(nnx.Module):

  def __init__(self, rngs):
    init = nnx.initializers.normal(1.0)
    self.up = nnx.Linear(8, 16, kernel_init=nnx.with_partitioning(init, (axes.EMBED, axes.MLP)),
                         use_bias=False, rngs=rngs)
    self.down = nnx.Linear(16, 8, kernel_init=nnx.with_partitioning(init, (axes.MLP, axes.EMBED)),
                           use_bias=False, rngs=rngs)

  def __call__(self, x):
    return self.down(jax.nn.relu(self.up(x)))


def test_sharded_init_matches_single_device_and_is_sharded():
  mesh = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
  with nnx.use_eager_sharding(False):
    reference = _Tiny(nnx.Rngs(0))
  model = sharding.sharded_init(lambda: _Tiny(nnx.Rngs(0)), mesh)
  assert model.up.kernel[...].sharding.spec == P("fsdp", "tensor")
  assert model.down.kernel[...].sharding.spec == P("tensor", "fsdp")
  np.testing.assert_array_equal(model.up.kernel[...], reference.up.kernel[...])

  x = sharding.shard_batch(jnp.ones((8, 8)), mesh)
  assert x.sharding.spec == P(("data", "fsdp"), None)
  np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(model, x), reference(jnp.ones((8, 8))),
                             rtol=1e-5, atol=1e-5)


def test_shard_batch_names_the_bad_array():
  mesh = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
  with pytest.raises(ValueError, match=r"\['tokens'\] has leading dimension 6"):
    sharding.shard_batch({"tokens": jnp.zeros((6, 3))}, mesh)
