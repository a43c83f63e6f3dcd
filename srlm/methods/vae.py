"""The Gaussian VAE baselines (docs/method.md §5): an LSTM encoder q(z | x) = N(mean,
diag exp(logvar)) of the decoder's sizes, trained with the decoder on the ELBO

    loss = mean over sentences of -log p(x | z), z ~ q(z | x)  +  beta * KL penalty,

with linear KL annealing (beta from `vae.kl_start` to 1 over `vae.kl_warmup_epochs`), free
bits (a per-dimension floor on the batch-mean KL) and He et al. (2019)'s aggressive schedule:
during the first `vae.aggressive_epochs` epochs, before each decoder step, the encoder alone is
updated on random batches until its loss stops improving (`loop_step`).

Evaluation: the importance-weighted bound with q(z | x) as proposal (M samples), the KL in
closed form, REC over the same samples; the posterior is q(z | x) itself (AU from the encoder
means, MI in closed form for the Gaussians); features are the encoder means.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from srlm import objectives
from srlm.config import Config
from srlm.methods import base
from srlm.models import Decoder, Encoder, make_decoder, make_encoder


# (decoder params, mean (B, D), logvar (B, D), batch, rng, beta, dropout) -> (mean, logvar):
# a per-sentence refinement of the encoder's q(z | x) (methods/savae.py), differentiable.
Refine = Callable[..., tuple[jax.Array, jax.Array]]
# (params, batch, rng, beta, dropout) -> q(z | x)'s (mean, logvar), each (B, D).
Posterior = Callable[..., tuple[jax.Array, jax.Array]]


def make_posterior(encoder: Encoder, refine: Refine | None = None) -> Posterior:
  """q(z | x): the encoder's, refined by `refine` when given (SA-VAE)."""
  def posterior(params, batch, rng, beta, dropout: bool):
    mean_BxD, logvar_BxD = encoder.apply({"params": params["encoder"]}, batch["targets"],
                                         batch["mask"])
    if refine is None:
      return mean_BxD, logvar_BxD
    return refine(params["decoder"], mean_BxD, logvar_BxD, batch, rng, beta, dropout)
  return posterior


def make_train_step(config: Config, model: Decoder, posterior: Posterior, steps_per_epoch: int,
                    parts: tuple[str, ...] = ("encoder", "decoder")) -> base.TrainStepFn:
  """The ELBO step; `parts` says which of encoder / decoder it updates. Only a step that
  updates the decoder counts as a step (the aggressive schedule's encoder-only updates don't),
  and beta is a function of that count. The ELBO is taken at `posterior`'s q, differentiated
  through any refinement (SA-VAE), whose randomness comes from a key of its own, so with no
  refinement step the step is exactly the VAE's."""
  vcfg = config.vae
  counts_step = "decoder" in parts
  kl_weight = objectives.kl_weight_schedule(vcfg.kl_start, vcfg.kl_warmup_epochs,
                                            steps_per_epoch)

  def train_step(state, batch, rng):
    z_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    sentence_mask_B = base.sentence_mask(batch)
    num_sentences = jnp.sum(sentence_mask_B)
    beta = kl_weight(state.step)

    def loss_fn(params):
      mean_BxD, logvar_BxD = posterior(params, batch, jax.random.fold_in(z_rng, 1), beta,
                                       dropout=True)
      z_BxD = objectives.reparameterize(mean_BxD, logvar_BxD, z_rng)
      nll_B = -objectives.decoder_log_likelihood(model, params["decoder"], z_BxD, batch,
                                                 dropout_rng)
      kl_BxD = objectives.gaussian_kl(mean_BxD, logvar_BxD) * sentence_mask_B[:, None]
      penalty = objectives.kl_penalty(kl_BxD, sentence_mask_B, vcfg.free_bits)
      loss = jnp.sum(nll_B) / jnp.maximum(num_sentences, 1.0) + beta * penalty
      return loss, (nll_B, kl_BxD)

    (loss, (nll_B, kl_BxD)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = {part: grads[part] for part in parts}
    state = state.apply_gradients(grads, count_step=counts_step)
    return state, {"loss": loss, "nll_sum": jnp.sum(nll_B), "kl_sum": jnp.sum(kl_BxD),
                   "num_tokens": jnp.sum(batch["mask"]), "num_sentences": num_sentences,
                   "kl_weight": beta, "param_grad_norm": optax.tree.norm(grads),
                   "encoder_steps": jnp.float32(1.0)}

  return train_step


def aggressive_encoder_updates(encoder_step: base.TrainStepFn, state, batches, config: Config,
                               rng: jax.Array):
  """He et al. 2019's inner loop: encoder-only updates on the random batches `batches` until
  the summed loss of a window of `aggressive_window` updates is no lower than the previous
  window's, or `aggressive_max_steps` updates. Returns the state and the number of updates."""
  vcfg = config.vae
  previous, current = math.inf, 0.0
  for update in range(1, vcfg.aggressive_max_steps + 1):
    state, metrics = encoder_step(state, next(batches), jax.random.fold_in(rng, update))
    current += float(metrics["loss"])
    if update % vcfg.aggressive_window == 0:
      if current >= previous:
        break
      previous, current = current, 0.0
  return state, update


def _aggressive_loop_step(config: Config, model: Decoder, posterior: Posterior,
                          steps_per_epoch: int):
  """LoopContext -> LoopStep: during the first aggressive_epochs epochs, the inner encoder
  loop then a decoder-only step; afterwards the joint step."""
  def make_loop_step(context: base.LoopContext) -> base.LoopStep:
    step_of = lambda parts: context.jit(
        make_train_step(config, model, posterior, steps_per_epoch, parts))
    encoder_step, decoder_step = step_of(("encoder",)), step_of(("decoder",))
    joint_step = step_of(("encoder", "decoder"))
    inner_rng = jax.random.fold_in(context.rng, 1 << 30)

    def loop_step(state, batch, epoch, step):
      if epoch >= config.vae.aggressive_epochs:
        return joint_step(state, batch, context.rng)
      # The inner batches are a function of the step, so a resumed run repeats them.
      state, encoder_updates = aggressive_encoder_updates(
          encoder_step, state, context.random_batches((step, 1)), config, inner_rng)
      state, metrics = decoder_step(state, batch, context.rng)
      return state, {**metrics, "encoder_steps": encoder_updates}

    return loop_step
  return make_loop_step


def _progress(summary: dict[str, float]) -> str:
  return (f"KL {summary['kl_per_sentence']:.2f} beta {summary['kl_weight']:.3f} "
          f"encoder steps {summary['encoder_steps']:.1f}")


# The VAE's estimator text; SA-VAE replaces the parts that name the encoder's q.
ESTIMATOR = base.Estimator(
    nll="importance-weighted bound with M={num_samples} samples of q(z|x) as proposal",
    kl="KL in closed form",
    rec="mean over the same samples",
    latent="AU from the encoder means, MI closed-form for the Gaussian q(z|x), q(z) over "
           "the whole split")


def make(config: Config, vocab_size: int, steps_per_epoch: int = 1,
         refine_of: Callable[[Decoder], Refine] | None = None) -> base.Method:
  """The VAE; with refine_of (decoder -> Refine), the VAE whose q(z | x) is refined
  (methods/savae.py): in training, and in every evaluation and latent-space mode (beta 1)."""
  model = make_decoder(config.model, vocab_size, config.model.latent_dim)
  encoder = make_encoder(config.model, vocab_size)
  posterior = make_posterior(encoder, refine_of(model) if refine_of is not None else None)
  num_samples = config.eval.num_samples

  def q(params, batch, rng):
    return posterior(params, batch, rng, jnp.float32(1.0), dropout=False)

  def init_params(rng):
    decoder_rng, encoder_rng = jax.random.split(rng)
    tokens = jnp.zeros((1, 2), jnp.int32)
    return {"decoder": base.init_decoder(model, decoder_rng),
            "encoder": encoder.init(encoder_rng, tokens, jnp.ones((1, 2)))["params"]}

  def posterior_step(params, batch, rng):
    mean_BxD, logvar_BxD = q(params, batch, rng)
    return mean_BxD, jnp.exp(logvar_BxD)

  def valid_step(params, batch, rng):
    mean, logvar = q(params, batch, jax.random.fold_in(rng, 1))
    z = objectives.reparameterize(mean, logvar, rng)
    return {"rec": -objectives.decoder_log_likelihood(model, params["decoder"], z, batch, None),
            "kl": jnp.sum(objectives.gaussian_kl(mean, logvar), axis=-1)}

  def nll_step(params, batch, rng):
    mean_BxD, logvar_BxD = q(params, batch, jax.random.fold_in(rng, 1))

    def one_sample(key):
      z_BxD = objectives.reparameterize(mean_BxD, logvar_BxD, key)
      log_lik_B = objectives.decoder_log_likelihood(model, params["decoder"], z_BxD, batch,
                                                    None)
      log_w_B = (log_lik_B + objectives.log_prior(z_BxD)
                 - objectives.log_normal_diag(z_BxD, mean_BxD, logvar_BxD))
      return log_w_B, log_lik_B

    log_w_MxB, log_lik_MxB = jax.lax.map(one_sample, jax.random.split(rng, num_samples))
    return {"nll": objectives.nll_from_log_weights(log_w_MxB),
            "kl": jnp.sum(objectives.gaussian_kl(mean_BxD, logvar_BxD), axis=-1),
            "rec": -jnp.mean(log_lik_MxB, axis=0)}

  return base.Method(
      name="vae",
      decoder=model,
      init_params=init_params,
      train_step=make_train_step(config, model, posterior, steps_per_epoch),
      valid_step=valid_step,
      nll_step=nll_step,
      latent=base.Latent(posterior_step=posterior_step, feature_step=posterior_step,
                         features="encoder means", feature_settings={},
                         log_likelihood=base.decoder_log_likelihood_fn(model)),
      report=base.Report(
          train_metrics={**base.COMMON_METRICS,
                         "kl_per_sentence": ("kl_sum", base.PER_SENTENCE),
                         "encoder_steps": ("encoder_steps", base.PER_STEP),
                         "kl_weight": ("kl_weight", base.LAST)},
          progress=_progress,
          curve=base.Curve("kl_per_sentence", "KL per sentence", in_valid=True),
          schedule=None,
          estimator=ESTIMATOR._replace(nll=ESTIMATOR.nll.format(num_samples=num_samples)),
          nll_samples=f"M={num_samples} samples of q(z|x) per sentence"),
      loop_step=(_aggressive_loop_step(config, model, posterior, steps_per_epoch)
                 if config.vae.aggressive_epochs else None),
  )
