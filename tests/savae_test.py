"""The semi-amortized VAE (srlm/methods/savae.py): no refinement is the VAE, refinement raises
a trained model's ELBO step by step, and the end-to-end encoder gradient is the derivative of
the loss at the refined q (central finite differences, float64)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from srlm import config as config_lib
from srlm import methods
from srlm import objectives
from srlm import state as state_lib
from srlm.methods import savae
from srlm.methods import vae
from srlm.models import make_decoder, make_encoder

from helpers import replace
from helpers import VOCAB, random_batch as _batch


def _config(**savae_fields):
  return replace(config_lib.tiny(), model={"kind": "savae", "dropout": 0.0},
                 savae={"refine_steps": 5, **savae_fields},
                 eval={"num_samples": 3, "num_posterior_chains": 2})


def test_no_refinement_step_is_the_vae():
  config = _config(refine_steps=0)
  sa_method = methods.get(config, VOCAB)
  vae_method = methods.get(replace(config, model={"kind": "vae"}), VOCAB)
  state = state_lib.create_train_state(vae_method, config.train, jax.random.key(0))
  batch, key = _batch(12), jax.random.key(1)
  sa_state, sa_metrics = jax.jit(sa_method.train_step)(state, batch, key)
  vae_state, vae_metrics = jax.jit(vae_method.train_step)(state, batch, key)
  chex.assert_trees_all_equal(sa_state.params, vae_state.params)
  chex.assert_trees_all_equal(sa_metrics, vae_metrics)
  chex.assert_trees_all_equal(jax.jit(sa_method.nll_step)(state.params, batch, key),
                              jax.jit(vae_method.nll_step)(state.params, batch, key))
  # ... and with refinement the step differs.
  refined = methods.get(_config(), VOCAB)
  refined_state, _ = jax.jit(refined.train_step)(state, batch, key)
  assert not all(np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(refined_state.params["encoder"]),
      jax.tree.leaves(vae_state.params["encoder"])))


def _elbo(model, decoder_params, mean_D, logvar_D, batch, eps_SxD):
  """The ELBO of sentence 0 at q = N(mean, exp(logvar)) from the samples eps (common random
  numbers across the iterates)."""
  one = {k: v[:1] for k, v in batch.items() if k != "epoch"}
  z_SxD = mean_D[None] + jnp.exp(0.5 * logvar_D)[None] * eps_SxD
  log_lik_S = jax.vmap(lambda z: objectives.decoder_log_likelihood(
      model, decoder_params, z[None], one, None)[0])(z_SxD)
  return jnp.mean(log_lik_S) - jnp.sum(objectives.gaussian_kl(mean_D, logvar_D))


def test_each_refinement_step_raises_the_elbo_of_a_trained_model():
  config = _config(refine_steps=8)
  method = methods.get(replace(config, model={"kind": "vae"}), VOCAB)
  state = state_lib.create_train_state(method, config.train, jax.random.key(0))
  train_step = jax.jit(method.train_step)
  batches = [_batch(12, batch_size=8, num_real=8, seed=seed) for seed in range(4)]
  for step in range(150):  # a VAE that has learned four batches
    state, _ = train_step(state, batches[step % 4], jax.random.key(step))
  model = make_decoder(config.model, VOCAB, config.model.latent_dim)
  encoder = make_encoder(config.model, VOCAB)
  batch = batches[0]
  mean_BxD, logvar_BxD = encoder.apply({"params": state.params["encoder"]}, batch["targets"],
                                       batch["mask"])
  path = savae.make_refinement_path(config, model)
  means, logvars = jax.jit(path, static_argnames="dropout")(
      state.params["decoder"], mean_BxD, logvar_BxD, batch, jax.random.key(5), 1.0,
      dropout=False)
  eps_SxD = jax.random.normal(jax.random.key(6), (4096, config.model.latent_dim))
  elbos = [float(_elbo(model, state.params["decoder"], means[k, 0], logvars[k, 0], batch,
                       eps_SxD)) for k in range(means.shape[0])]
  assert np.all(np.diff(elbos) > 0), elbos


def test_end_to_end_encoder_gradient_matches_finite_differences():
  config = _config(refine_steps=3)
  model = make_decoder(config.model, VOCAB, config.model.latent_dim)
  encoder = make_encoder(config.model, VOCAB)
  batch = {k: v for k, v in _batch(12).items() if k != "epoch"}
  with jax.enable_x64():
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64),
                          methods.get(config, VOCAB).init_params(jax.random.key(0)))
    refine = savae.make_refine(config, model)
    z_key, refine_key = jax.random.split(jax.random.key(1))

    def loss(encoder_params, refined=True):
      all_params = {**params, "encoder": encoder_params}
      posterior = vae.make_posterior(encoder, refine if refined else None)
      mean, logvar = posterior(all_params, batch, refine_key, 1.0, dropout=False)
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(z_key, mean.shape, mean.dtype)
      nll_B = -objectives.decoder_log_likelihood(model, params["decoder"], z, batch, None)
      return jnp.mean(nll_B + jnp.sum(objectives.gaussian_kl(mean, logvar), axis=-1))

    grad = jax.grad(loss)(params["encoder"])
    plain_grad = jax.grad(lambda p: loss(p, refined=False))(params["encoder"])
    leaves, treedef = jax.tree.flatten(params["encoder"])
    keys = jax.random.split(jax.random.key(2), len(leaves))
    direction = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype)
                                             for k, x in zip(keys, leaves)])
    along = lambda t: jax.tree.map(lambda p, d: p + t * d, params["encoder"], direction)
    h = 1e-5
    finite_difference = (jax.jit(loss)(along(h)) - jax.jit(loss)(along(-h))) / (2 * h)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad),
                                                  jax.tree.leaves(direction)))
    plain = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(plain_grad),
                                               jax.tree.leaves(direction)))
    np.testing.assert_allclose(float(analytic), float(finite_difference), rtol=1e-6)
    # The refinement is in the gradient: without it, the derivative is another number.
    assert abs(float(plain) - float(finite_difference)) > 1e-3 * abs(float(finite_difference))


def test_the_estimator_text_names_the_refined_q():
  """SA-VAE overrides the parts of the VAE's estimator text that name the encoder's q."""
  config = _config(refine_steps=4)
  text = methods.get(config, VOCAB).report.estimator.text
  assert "refined by 4 steps of momentum gradient descent" in text
  assert "KL in closed form at the refined q" in text and "the refined means" in text
  assert "encoder means" not in text
  plain = methods.get(replace(config, model={"kind": "vae"}), VOCAB).report.estimator.text
  assert "encoder means" in plain and "refined" not in plain
