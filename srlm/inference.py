"""Inferring z for a batch of sentences with the short-run chain of SRI_SPEC §2."""

import jax
import jax.numpy as jnp

from srlm import langevin
from srlm import objectives
from srlm.models import Decoder

Batch = dict[str, jax.Array]


def infer_z(model: Decoder, params, batch: Batch, rng: jax.Array, step_sizes_K: jax.Array,
            temperature: jax.Array, dropout: bool, param_grads: bool = False):
  """The short-run chain from z_0 ~ N(0, I) for every sentence: (z_0, z_K, StepInfo, aux).

  With `dropout`, each step's log density draws its own dropout mask (SRI_SPEC §2). With
  `param_grads`, aux is sum_k grad_theta NLL_sum(x | z_k) over the K chain states, taken from
  the same backward pass as each step's z gradient (the authors' accumulated gradient);
  otherwise aux is ().
  """
  z0_rng, chain_rng = jax.random.split(rng)
  z0_BxD = jax.random.normal(z0_rng, (batch["targets"].shape[0], model.latent_dim))

  def logdensity_fn(params, z_BxD, dropout_rng):
    return objectives.log_joint(
        lambda z: objectives.decoder_log_likelihood(model, params, z, batch,
                                                    dropout_rng if dropout else None), z_BxD)

  if param_grads:
    def value_and_grad_fn(z_BxD, dropout_rng):
      def total(params, z_BxD):
        values = logdensity_fn(params, z_BxD, dropout_rng)
        return jnp.sum(values), values
      (_, values), (params_grad, z_grad) = jax.value_and_grad(
          total, argnums=(0, 1), has_aux=True)(params, z_BxD)
      # d/dtheta NLL_sum = -d/dtheta log p(x, z): the prior has no parameters.
      return values, z_grad, jax.tree.map(jnp.negative, params_grad)
  else:
    value_and_grad_fn = langevin.per_example_value_and_grad(
        lambda z_BxD, dropout_rng: logdensity_fn(params, z_BxD, dropout_rng))
  zK_BxD, infos, aux = langevin.short_run_chain(chain_rng, z0_BxD, value_and_grad_fn,
                                                step_sizes_K, temperature)
  return z0_BxD, zK_BxD, infos, aux
