"""The training state: step count, parameters and one Adam state per part (docs/method.md §3).

Every method's parameters are a dict of parts ({"decoder": ...}, plus "encoder" for the VAE);
each part has its own optimiser state (and may have its own optimiser: the method's
`optimizers`) so that a part can be updated alone (the aggressive VAE
schedule updates the encoder many times per decoder step) without the other's Adam moments
moving it.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct

from srlm import objectives
from srlm import parallel
from srlm.config import TrainConfig


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: dict[str, Any]
  opt_state: dict[str, Any]
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  clip_norm: float = struct.field(pytree_node=False)
  # (part, optimiser) for the parts that do not use tx (the learned step sizes); a tuple of
  # pairs because static fields must hash.
  part_tx: tuple[tuple[str, optax.GradientTransformation], ...] = struct.field(
      pytree_node=False, default=())

  @classmethod
  def create(cls, params: dict[str, Any], config: TrainConfig,
             part_optimizers: Mapping[str, optax.GradientTransformation] | None = None
             ) -> "TrainState":
    """Adam at config.learning_rate for every part, except those in part_optimizers."""
    state = cls(step=jnp.zeros((), jnp.int32), params=params, opt_state={},
                tx=optax.adam(config.learning_rate), clip_norm=config.grad_clip_norm,
                part_tx=tuple(sorted((part_optimizers or {}).items())))
    return state.replace(opt_state={part: state.optimizer(part).init(p)
                                    for part, p in params.items()})

  def optimizer(self, part: str) -> optax.GradientTransformation:
    return dict(self.part_tx).get(part, self.tx)

  def apply_gradients(self, grads: dict[str, Any], count_step: bool = True) -> "TrainState":
    """Clips the given parts' gradients by their joint global norm, then one Adam step on
    each given part; parts absent from grads are untouched. step counts decoder updates."""
    grads = objectives.clip_by_global_norm(grads, self.clip_norm)
    params, opt_state = dict(self.params), dict(self.opt_state)
    for part, grad in grads.items():
      updates, opt_state[part] = self.optimizer(part).update(
          grad, self.opt_state[part], self.params[part])
      params[part] = optax.apply_updates(self.params[part], updates)
    return self.replace(step=self.step + int(count_step), params=params, opt_state=opt_state)


def create_train_state(method, config: TrainConfig, rng: jax.Array) -> TrainState:
  """The initial state of a `srlm.methods.Method` (parameters from method.init_params(rng))."""
  return TrainState.create(method.init_params(rng), config, method.optimizers)


def create_replicated_train_state(method, config: TrainConfig, rng: jax.Array,
                                  mesh: jax.sharding.Mesh) -> TrainState:
  """create_train_state, computed under jit straight into replicated arrays on the mesh (so
  every process holds the same state without copying it between hosts)."""
  return parallel.jit_replicated(lambda key: create_train_state(method, config, key), mesh)(rng)
