"""The decoder: causality, dependence on z, dropout, initialisation."""

import jax
import jax.numpy as jnp
import numpy as np

from srlm import config as config_lib
from srlm import models
from srlm.models import make_decoder


def test_logits_at_t_do_not_depend_on_later_tokens(tiny_decoder):
  model, params, batch = tiny_decoder
  z = jax.random.normal(jax.random.key(0), (4, 3))
  inputs = jnp.asarray(batch["inputs"])
  logits = model.apply({"params": params}, z, inputs, deterministic=True)
  for t in range(inputs.shape[1] - 1):
    changed = inputs.at[:, t + 1:].set((inputs[:, t + 1:] + 5) % 23)
    other = model.apply({"params": params}, z, changed, deterministic=True)
    np.testing.assert_allclose(other[:, :t + 1], logits[:, :t + 1], rtol=1e-6, atol=1e-6)
    assert not np.allclose(other[:, t + 1:], logits[:, t + 1:])


def test_z_changes_every_steps_logits(tiny_decoder):
  model, params, batch = tiny_decoder
  z = jax.random.normal(jax.random.key(0), (4, 3))
  a = model.apply({"params": params}, z, batch["inputs"], deterministic=True)
  b = model.apply({"params": params}, z + 0.5, batch["inputs"], deterministic=True)
  assert np.all(np.abs(a - b).max(axis=-1) > 1e-4)  # z enters at every step, not only h_0


def test_dropout_only_in_training_and_fresh_per_key(tiny_decoder):
  model, params, batch = tiny_decoder
  z = jnp.zeros((4, 3))
  run = lambda key, det: model.apply({"params": params}, z, batch["inputs"], deterministic=det,
                                     rngs={"dropout": jax.random.key(key)})
  np.testing.assert_array_equal(run(0, True), run(1, True))
  assert not np.allclose(run(0, False), run(1, False))
  np.testing.assert_array_equal(run(0, False), run(0, False))


def test_paper_sizes_and_uniform_init():
  model = make_decoder(config_lib.ModelConfig(), vocab_size=10002, latent_dim=32)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32)), jnp.zeros((1, 2), jnp.int32),
                      deterministic=True)["params"]
  shapes = {k: v.shape for k, v in params.items()}
  assert shapes["embedding"] == (10002, 256) and shapes["out_w"] == (10002, 256)
  assert shapes["lstm_w_x"] == (256, 1024) and shapes["lstm_w_z"] == (32, 1024)
  assert shapes["lstm_w_h"] == (256, 1024) and shapes["init_w"] == (32, 256)
  for name, value in params.items():
    assert float(jnp.max(jnp.abs(value))) <= 0.1 + 1e-6, name
    assert float(jnp.std(value)) > 0.05, name  # U(-0.1, 0.1) has std 0.0577


def test_bfloat16_decoder_stays_close_to_float32_and_returns_float32(tiny_decoder):
  """compute_dtype reaches every decoder matmul (LSTM gates, h_0, output) and its z gradient."""
  model, params, batch = tiny_decoder
  bf16 = model.clone(compute_dtype="bfloat16")
  z = jax.random.normal(jax.random.key(0), (4, 3))
  def logits_and_z_grad(decoder):
    logits = decoder.apply({"params": params}, z, batch["inputs"], deterministic=True)
    grad = jax.grad(lambda z: decoder.apply({"params": params}, z, batch["inputs"],
                                            deterministic=True).sum())(z)
    return logits, grad
  logits32, grad32 = logits_and_z_grad(model)
  logits16, grad16 = logits_and_z_grad(bf16)
  assert logits16.dtype == grad16.dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(logits32)))
  np.testing.assert_allclose(logits16, logits32, atol=3e-2 * scale)
  np.testing.assert_allclose(grad16, grad32, atol=5e-2 * float(jnp.max(jnp.abs(grad32))))
  assert not np.array_equal(np.asarray(logits16), np.asarray(logits32))


def test_scan_unroll_changes_no_number(tiny_decoder):
  """--config.model.scan_unroll is a speed setting: logits and their gradients (in z and in
  the parameters) are those of the rolled recurrence, up to float32 reassociation (at HIGHEST,
  conftest), at a factor that divides the length and one that does not; 0 is the backend's."""
  model, params, batch = tiny_decoder
  z = jax.random.normal(jax.random.key(0), (4, 3))

  def outputs(decoder):
    loss = lambda p, z: jnp.sum(decoder.apply({"params": p}, z, batch["inputs"],
                                              deterministic=True) ** 2)
    return (decoder.apply({"params": params}, z, batch["inputs"], deterministic=True),
            *jax.grad(loss, (0, 1))(params, z))

  rolled = outputs(model)
  for unroll in (3, 7):
    for got, want in zip(jax.tree.leaves(outputs(model.clone(unroll=unroll))),
                         jax.tree.leaves(rolled)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(want))))
  config = config_lib.Config()
  assert make_decoder(config.model, 23, 3).unroll == models.SCAN_UNROLL[jax.default_backend()]
  config.model.scan_unroll = 4
  assert make_decoder(config.model, 23, 3).unroll == 4
