"""The state every trainer carries: parameters, optimizer state and step, as one pytree.

The model's structure (`nnx.GraphDef`) and the optimizer are static fields, so a
`TrainState` passes through `jax.jit` (donated, sharded) as plain arrays while the step
function can still rebuild the module with `state.model()`.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from cosmojax import optim


@flax.struct.dataclass
class TrainState:
  """Attributes:
    step: [] int32 optimizer updates applied (a skipped non-finite step does not count).
    params: the model's `nnx.State` (its `nnx.Param`s).
    opt_state: the optimizer state of `params`.
    graphdef: the model's structure (static).
    tx: the optimizer (static).
  """

  step: jax.Array
  params: Any
  opt_state: Any
  graphdef: Any = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, model: nnx.Module, tx: optax.GradientTransformation) -> TrainState:
    graphdef, params = nnx.split(model)
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               graphdef=graphdef, tx=tx)

  def model(self, params: Any = None) -> nnx.Module:
    """The module with `params` (default: this state's parameters)."""
    return nnx.merge(self.graphdef, self.params if params is None else params)

  def apply_gradients(self, grads: Any, loss: jax.Array) -> tuple[TrainState, dict[str, Any]]:
    """One optimizer update, skipped (state unchanged, `skipped` reported) when the loss or
    the gradient norm is not finite. Returns (new state, {"skipped", "grad_norm"})."""
    params, opt_state, metrics = optim.apply_gradients(self.tx, self.params, self.opt_state,
                                                       grads, loss)
    step = self.step + jnp.logical_not(metrics["skipped"]).astype(jnp.int32)
    return self.replace(step=step, params=params, opt_state=opt_state), metrics
