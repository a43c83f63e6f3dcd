"""The training state: step count, parameters and one Adam state per part (docs/method.md §3).

Every method's parameters are a dict of parts ({"decoder": ...}, plus "encoder" for the VAE);
each part has its own optimiser state so that a part can be updated alone (the aggressive VAE
schedule updates the encoder many times per decoder step) without the other's Adam moments
moving it.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from srlm import parallel
from srlm.config import TrainConfig


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: dict[str, Any]
  opt_state: dict[str, Any]
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  clip_norm: float = struct.field(pytree_node=False)

  @classmethod
  def create(cls, params: dict[str, Any], config: TrainConfig) -> "TrainState":
    tx = optax.adam(config.learning_rate)
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state={part: tx.init(p) for part, p in params.items()}, tx=tx,
               clip_norm=config.grad_clip_norm)

  def apply_gradients(self, grads: dict[str, Any], count_step: bool = True) -> "TrainState":
    """Clips the given parts' gradients by their joint global norm, then one Adam step on
    each given part; parts absent from grads are untouched. step counts decoder updates."""
    norm = optax.tree.norm(grads)
    scale = jnp.where(norm > self.clip_norm, self.clip_norm / norm, 1.0)
    params, opt_state = dict(self.params), dict(self.opt_state)
    for part, grad in grads.items():
      updates, opt_state[part] = self.tx.update(
          jax.tree.map(lambda g: g * scale, grad), self.opt_state[part], self.params[part])
      params[part] = optax.apply_updates(self.params[part], updates)
    return self.replace(step=self.step + int(count_step), params=params, opt_state=opt_state)


def create_train_state(method, config: TrainConfig, rng: jax.Array) -> TrainState:
  """The initial state of a `srlm.methods.Method` (parameters from method.init_params(rng))."""
  return TrainState.create(method.init_params(rng), config)


def create_replicated_train_state(method, config: TrainConfig, rng: jax.Array,
                                  mesh: jax.sharding.Mesh) -> TrainState:
  """create_train_state, computed under jit straight into replicated arrays on the mesh (so
  every process holds the same state without copying it between hosts)."""
  return parallel.jit_replicated(lambda key: create_train_state(method, config, key), mesh)(rng)
