"""The short-run chain: Langevin correctness, ascent, per-sentence gradients, schedules."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srlm import langevin
from srlm import objectives


def _gaussian_logdensity(mean, std):
  def logdensity_fn(z, rng):
    del rng
    return jnp.sum(-0.5 * ((z - mean[None]) / std[None]) ** 2, axis=-1)
  return logdensity_fn


def test_unit_temperature_samples_a_gaussian_target():
  """T = 1 with many small steps is Langevin dynamics: the chains' moments match the target."""
  mean, std = jnp.array([1.5, -2.0, 0.0]), jnp.array([0.5, 1.0, 2.0])
  fn = langevin.per_example_value_and_grad(_gaussian_logdensity(mean, std))
  num_chains, num_steps, step = 4000, 1500, 0.1
  z0 = jnp.zeros((num_chains, 3))
  z, _, _ = jax.jit(langevin.short_run_chain, static_argnums=2)(
      jax.random.key(0), z0, fn, jnp.full((num_steps,), step), 1.0)
  # Unadjusted Langevin has an O(step^2) variance bias: (s std)^2/4 relative, < 4% here.
  np.testing.assert_allclose(z.mean(0), mean, atol=4 * 2.0 / np.sqrt(num_chains))
  np.testing.assert_allclose(z.std(0), std, rtol=0.06)


def _decoder_log_joint(model, params, batch):
  """(z, rng) -> log p(x, z) per sentence, dropout off (rng unused)."""
  def logdensity_fn(z, rng):
    del rng
    return objectives.log_joint(
        lambda z: objectives.decoder_log_likelihood(model, params, z, batch, None), z)
  return logdensity_fn


def test_zero_temperature_small_steps_never_decrease_log_joint(tiny_decoder):
  model, params, batch = tiny_decoder
  logdensity_fn = _decoder_log_joint(model, params, batch)

  z0 = jax.random.normal(jax.random.key(1), (batch["targets"].shape[0], model.latent_dim))
  fn = langevin.per_example_value_and_grad(logdensity_fn)
  zK, infos, _ = langevin.short_run_chain(jax.random.key(2), z0, fn, jnp.full((30,), 0.05), 0.0)
  trajectory = np.concatenate([infos.log_density, logdensity_fn(zK, None)[None]], axis=0)
  assert np.all(np.diff(trajectory, axis=0) >= -1e-4), np.diff(trajectory, axis=0).min()
  assert np.all(trajectory[-1] > trajectory[0] + 1e-3)  # and it actually climbs


def test_batch_gradient_is_each_sentences_own_gradient(tiny_decoder):
  """The gradient of the batch-summed log joint equals per-sentence gradients (vmap)."""
  model, params, batch = tiny_decoder
  logdensity_fn = _decoder_log_joint(model, params, batch)

  def one_sentence(z_D, index):
    single = jax.tree.map(lambda x: jnp.asarray(x)[index][None], batch)
    return objectives.log_joint(
        lambda z: objectives.decoder_log_likelihood(model, params, z, single, None),
        z_D[None])[0]

  z = jax.random.normal(jax.random.key(3), (batch["targets"].shape[0], model.latent_dim))
  values, grads, _ = langevin.per_example_value_and_grad(logdensity_fn)(z, None)
  indices = jnp.arange(z.shape[0])
  np.testing.assert_allclose(grads, jax.vmap(jax.grad(one_sentence))(z, indices), atol=1e-5)
  np.testing.assert_allclose(values, jax.vmap(one_sentence)(z, indices), rtol=1e-5)


def test_each_step_uses_a_fresh_key():
  """Noise differs between steps (no key reuse): with zero gradient, increments differ."""
  fn = langevin.per_example_value_and_grad(lambda z, rng: jnp.zeros(z.shape[0]))
  z0 = jnp.zeros((1, 4))
  _, _, _ = langevin.short_run_chain(jax.random.key(0), z0, fn, jnp.ones(2), 1.0)
  z1, _, _ = langevin.short_run_chain(jax.random.key(0), z0, fn, jnp.ones(1), 1.0)
  z2, _, _ = langevin.short_run_chain(jax.random.key(0), z0, fn, jnp.ones(2), 1.0)
  assert not np.allclose(z2 - z1, z1)


def test_step_is_the_stated_update():
  """z' = z + s^2/2 grad + T s eps, checked against the formula with the same noise."""
  mean = jnp.array([2.0, -1.0])
  fn = langevin.per_example_value_and_grad(_gaussian_logdensity(mean, jnp.ones(2)))
  z = jnp.array([[0.5, 0.5]])
  key = jax.random.key(7)
  z_next, info, _ = langevin.langevin_step(key, z, fn, 0.3, 0.2)
  eps = jax.random.normal(jax.random.split(key)[0], z.shape)
  np.testing.assert_allclose(z_next, z + 0.045 * (mean[None] - z) + 0.2 * 0.3 * eps, rtol=1e-6)
  np.testing.assert_allclose(info.grad_norm, jnp.linalg.norm(mean[None] - z, axis=-1), rtol=1e-6)


@pytest.mark.parametrize("epoch,expected", [(1, 0.05), (15, 0.05), (16, 0.1), (17, 0.15),
                                            (18, 0.2), (60, 0.2)])
def test_paper_temperature_schedule(epoch, expected):
  t = langevin.temperature_at(epoch, (15.0, 18.0), (0.05, 0.2))
  assert float(t) == pytest.approx(expected, abs=1e-6)


def test_chain_is_jittable_and_vmappable(tiny_decoder):
  model, params, batch = tiny_decoder
  fn = langevin.per_example_value_and_grad(lambda z, rng: -0.5 * jnp.sum(z ** 2, axis=-1))
  z0 = jnp.ones((5, 3))
  run = chex.assert_max_traces(
      lambda key, z0: langevin.short_run_chain(key, z0, fn, jnp.full((3,), 0.1), 0.0)[0], n=1)
  run = jax.jit(run)
  a = run(jax.random.key(0), z0)
  b = run(jax.random.key(1), z0)  # same shapes: no retrace
  np.testing.assert_allclose(a, b)  # T = 0: deterministic, key only feeds the noise
  many = jax.vmap(lambda z: langevin.short_run_chain(
      jax.random.key(0), z[None], fn, jnp.full((3,), 0.1), 0.0)[0][0])(z0)
  np.testing.assert_allclose(many, a, rtol=1e-6)
