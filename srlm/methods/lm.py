"""The LSTM language model baseline (docs/method.md §5): the same decoder without z.

Its likelihood is exact, so the NLL needs no sampling: kl = 0 and rec = nll. It has no latent
space: no posterior, no features, and AU = MI = 0.
"""

import jax
import jax.numpy as jnp
import optax

from srlm import objectives
from srlm.config import Config
from srlm.methods import base
from srlm.models import make_decoder


def make(config: Config, vocab_size: int, steps_per_epoch: int = 1) -> base.Method:
  del steps_per_epoch  # no schedule
  model = make_decoder(config.model, vocab_size, latent_dim=0)

  def nll(params, batch, dropout_rng):
    return -objectives.decoder_log_likelihood(model, params, base.empty_latent(batch), batch,
                                              dropout_rng)

  def train_step(state, batch, rng):
    dropout_rng = jax.random.fold_in(rng, state.step)
    num_sentences = jnp.sum(base.sentence_mask(batch))

    def loss_fn(params):
      nll_B = nll(params, batch, dropout_rng)
      return jnp.sum(nll_B) / jnp.maximum(num_sentences, 1.0), nll_B

    (loss, nll_B), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["decoder"])
    state = state.apply_gradients({"decoder": grads})
    return state, {"loss": loss, "nll_sum": jnp.sum(nll_B), "num_tokens": jnp.sum(batch["mask"]),
                   "num_sentences": num_sentences, "param_grad_norm": optax.tree.norm(grads)}

  def valid_step(params, batch, rng):
    del rng
    return {"rec": nll(params["decoder"], batch, None)}

  def nll_step(params, batch, rng):
    del rng
    nll_B = nll(params["decoder"], batch, None)
    return {"nll": nll_B, "kl": jnp.zeros_like(nll_B), "rec": nll_B}

  return base.Method(
      name="lm",
      decoder=model,
      init_params=lambda rng: {"decoder": base.init_decoder(model, rng)},
      train_step=train_step,
      valid_step=valid_step,
      nll_step=nll_step,
      report=base.Report(
          train_metrics=dict(base.COMMON_METRICS),
          progress=lambda summary: "lm",
          curve=None,
          schedule=None,
          estimator=base.Estimator(nll="exact NLL (no latent)", kl="KL 0",
                                   rec="equals the NLL", latent="0 (no latent)"),
          nll_samples="exact NLL"),
  )
