"""The semi-amortized VAE (docs/method.md §8; Kim, Wiseman, Miller, Sontag, Rush, ICML 2018;
code: github.com/harvardnlp/sa-vae): the VAE of methods/vae.py whose q(z | x) is refined per
sentence before use.

The encoder gives lambda_0 = (mean_0, logvar_0); K steps of gradient descent with momentum on
the sentence's negative ELBO refine it:
    g_k = clip(grad_lambda [-log p(x | z) + beta KL(q_lambda || N(0, I))] at lambda_k),
          z = mean + exp(logvar / 2) eps_k with a fresh eps_k (and dropout mask) per step,
    v_{k+1} = momentum v_k - g_k,   lambda_{k+1} = lambda_k + lr v_{k+1},   v_0 = 0,
the mean's and the logvar's gradients each clipped to norm savae.refine_max_grad_norm. The
decoder and the encoder both learn from the ELBO at lambda_K, differentiated through the
unrolled refinement (a lax.scan): the encoder end to end, as in their main setting (train_n2n),
and the decoder by its total derivative, as their acc_param_grads does. Their code takes the
Hessian-vector products of the backward pass by finite differences; autodiff gives them exactly.

Where srlm departs from their code: each sentence is refined on its own ELBO (their loss is
the batch mean, so a step moves a sentence by lr / B times its own gradient, and the clip acts
on the whole batch's gradient). launch/ptb_savae.flags converts their values for B = 32.

Evaluation (beta = 1, dropout off): the refined q is the proposal of the importance-weighted
NLL, KL is closed form at lambda_K, AU/MI/features from the refined means and variances.
"""

import jax
import jax.numpy as jnp

from srlm import objectives
from srlm.config import Config
from srlm.methods import base
from srlm.methods import vae
from srlm.models import Decoder


def _clip_rows(g_BxD: jax.Array, max_norm: float) -> jax.Array:
  """Each row scaled down to norm max_norm if longer (the 1e-12 keeps d norm finite at 0)."""
  norm_Bx1 = jnp.sqrt(jnp.sum(g_BxD ** 2, axis=-1, keepdims=True) + 1e-12)
  return g_BxD * (max_norm / jnp.maximum(norm_Bx1, max_norm))


def make_refinement_path(config: Config, model: Decoder):
  """Like a vae.Refine, but returns every iterate: means and logvars (K + 1, B, D) each,
  lambda_0 (the encoder's) first."""
  sa = config.savae

  def refinement_path(decoder_params, mean_BxD, logvar_BxD, batch, rng, beta, dropout):
    def negative_elbo_sum(mean_BxD, logvar_BxD, key):
      z_rng, dropout_rng = jax.random.split(key)
      z_BxD = objectives.reparameterize(mean_BxD, logvar_BxD, z_rng)
      log_lik_B = objectives.decoder_log_likelihood(model, decoder_params, z_BxD, batch,
                                                    dropout_rng if dropout else None)
      kl_B = jnp.sum(objectives.gaussian_kl(mean_BxD, logvar_BxD), axis=-1)
      # Sentence b's ELBO depends on row b only: the gradient of the sum is every
      # sentence's own gradient.
      return jnp.sum(-log_lik_B + beta * kl_B)

    def step(carry, key):
      mean_BxD, logvar_BxD, velocity_mean, velocity_logvar = carry
      grad_mean, grad_logvar = jax.grad(negative_elbo_sum, argnums=(0, 1))(
          mean_BxD, logvar_BxD, key)
      velocity_mean = sa.refine_momentum * velocity_mean - _clip_rows(
          grad_mean, sa.refine_max_grad_norm)
      velocity_logvar = sa.refine_momentum * velocity_logvar - _clip_rows(
          grad_logvar, sa.refine_max_grad_norm)
      mean_BxD = mean_BxD + sa.refine_learning_rate * velocity_mean
      logvar_BxD = logvar_BxD + sa.refine_learning_rate * velocity_logvar
      return (mean_BxD, logvar_BxD, velocity_mean, velocity_logvar), (mean_BxD, logvar_BxD)

    zeros = jnp.zeros_like(mean_BxD)
    _, (means_KxBxD, logvars_KxBxD) = jax.lax.scan(
        step, (mean_BxD, logvar_BxD, zeros, zeros), jax.random.split(rng, sa.refine_steps))
    return (jnp.concatenate([mean_BxD[None], means_KxBxD]),
            jnp.concatenate([logvar_BxD[None], logvars_KxBxD]))

  return refinement_path


def make_refine(config: Config, model: Decoder) -> vae.Refine:
  """The refinement lambda_0 -> lambda_K above, as a vae.Refine."""
  path = make_refinement_path(config, model)

  def refine(decoder_params, mean_BxD, logvar_BxD, batch, rng, beta, dropout):
    means, logvars = path(decoder_params, mean_BxD, logvar_BxD, batch, rng, beta, dropout)
    return means[-1], logvars[-1]  # with 0 steps, the encoder's own

  return refine


def make(config: Config, vocab_size: int, steps_per_epoch: int = 1) -> base.Method:
  sa = config.savae
  method = vae.make(config, vocab_size, steps_per_epoch,
                    refine_of=lambda model: make_refine(config, model))
  refined = (f"q(z|x) refined by {sa.refine_steps} steps of momentum gradient descent "
             f"(lr {sa.refine_learning_rate}, momentum {sa.refine_momentum})")
  num_samples = config.eval.num_samples
  return method._replace(
      name="savae",
      latent=method.latent._replace(
          features=f"means of the {refined}",
          feature_settings={"refine_steps": sa.refine_steps,
                            "refine_learning_rate": sa.refine_learning_rate,
                            "refine_momentum": sa.refine_momentum,
                            "refine_max_grad_norm": sa.refine_max_grad_norm}),
      report=method.report._replace(
          estimator=method.report.estimator._replace(
              nll=(f"importance-weighted bound with M={num_samples} samples of the {refined} "
                   "as proposal"),
              kl="KL in closed form at the refined q",
              latent="AU from the refined means, MI closed-form for the refined Gaussian "
                     "q(z|x), q(z) over the whole split"),
          nll_samples=f"M={num_samples} samples of the refined q(z|x) per sentence"),
  )
