"""log p(z), log p(x | z) (the fused VJP against autodiff), masking."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srlm import objectives


def _reference_log_likelihood(hidden_TxBxH, out_w, out_b, targets, mask):
  logits = jnp.swapaxes(hidden_TxBxH, 0, 1) @ out_w.T + out_b[None, None, :]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  token = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(token * mask, axis=-1)


@pytest.fixture
def problem():
  rng = np.random.default_rng(0)
  T, B, H, V = 5, 3, 4, 11
  hidden = jnp.asarray(rng.normal(size=(T, B, H)), jnp.float32)
  out_w = jnp.asarray(rng.normal(size=(V, H)), jnp.float32)
  out_b = jnp.asarray(rng.normal(size=(V,)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
  mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], jnp.float32)
  return hidden, out_w, out_b, targets, mask


def test_log_prior_is_standard_normal_density():
  z = jnp.array([[0.0, 0.0], [1.0, -2.0]])
  expected = [-math.log(2 * math.pi), -math.log(2 * math.pi) - 2.5]
  np.testing.assert_allclose(objectives.log_prior(z), expected, rtol=1e-6)


def test_fused_log_likelihood_matches_autodiff(problem):
  """Same value and the same gradients (hidden, weights, bias) as log_softmax + autodiff."""
  hidden, out_w, out_b, targets, mask = problem
  cotangent = jnp.array([0.3, -1.2, 2.0])
  fused = lambda h, w, b: objectives.log_likelihood(h, w, b, targets, mask) @ cotangent
  ref = lambda h, w, b: _reference_log_likelihood(h, w, b, targets, mask) @ cotangent
  np.testing.assert_allclose(objectives.log_likelihood(hidden, out_w, out_b, targets, mask),
                             _reference_log_likelihood(hidden, out_w, out_b, targets, mask),
                             rtol=1e-5)
  for got, want in zip(jax.grad(fused, (0, 1, 2))(hidden, out_w, out_b),
                       jax.grad(ref, (0, 1, 2))(hidden, out_w, out_b)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fused_log_likelihood_is_stable_for_large_logits(problem):
  hidden, out_w, out_b, targets, mask = problem
  value = objectives.log_likelihood(hidden * 1e3, out_w, out_b, targets, mask)
  grads = jax.grad(lambda h: objectives.log_likelihood(h, out_w, out_b, targets, mask).sum())(
      hidden * 1e3)
  assert np.all(np.isfinite(value)) and np.all(np.isfinite(grads))


def test_padding_contributes_exactly_zero(problem):
  hidden, out_w, out_b, targets, mask = problem
  value = objectives.log_likelihood(hidden, out_w, out_b, targets, mask)
  # Change what sits under the padding: targets and hidden states. Nothing moves.
  padded = mask == 0
  other_targets = jnp.where(padded, (targets + 3) % 11, targets)
  other_hidden = jnp.where(padded.T[..., None], hidden + 100.0, hidden)
  np.testing.assert_array_equal(
      objectives.log_likelihood(other_hidden, out_w, out_b, other_targets, mask), value)
  grad_h = jax.grad(lambda h: objectives.log_likelihood(h, out_w, out_b, targets, mask).sum())(
      hidden)
  assert np.all(grad_h[padded.T] == 0.0)
  # A sentence's value is the sum of its own tokens' log-probabilities only.
  single = objectives.log_likelihood(hidden[:1, 2:3], out_w, out_b, targets[2:3, :1],
                                     mask[2:3, :1])
  np.testing.assert_allclose(single, value[2:3], rtol=1e-6)


def test_log_joint_adds_the_prior():
  z = jnp.array([[0.5, -1.0]])
  value = objectives.log_joint(lambda z: jnp.array([-3.0]), z)
  np.testing.assert_allclose(value, -3.0 + objectives.log_prior(z), rtol=1e-6)


def test_gaussian_kl_is_the_closed_form_and_matches_monte_carlo():
  mean = jnp.array([[0.5, -1.0, 0.0]])
  logvar = jnp.array([[0.2, -0.7, 1.1]])
  kl = float(jnp.sum(objectives.gaussian_kl(mean, logvar)))
  var = jnp.exp(logvar[0])
  closed = 0.5 * float(jnp.sum(var) + mean[0] @ mean[0] - 3 - jnp.sum(jnp.log(var)))
  assert kl == pytest.approx(closed, rel=1e-6)
  z = mean + jnp.sqrt(var)[None] * jax.random.normal(jax.random.key(0), (200000, 3))
  monte_carlo = jnp.mean(objectives.log_normal_diag(z, mean, logvar) - objectives.log_prior(z))
  assert float(monte_carlo) == pytest.approx(kl, abs=0.02)


def test_free_bits_floor_each_dimension_of_the_batch_mean_kl():
  kl = jnp.array([[0.1, 2.0, 0.3], [0.3, 4.0, 0.5], [9.0, 9.0, 9.0]])
  rows = jnp.array([1.0, 1.0, 0.0])  # the third row is padding
  # Batch means per dimension: 0.2, 3.0, 0.4; floor 0.5 lifts the first and the last.
  assert float(objectives.kl_penalty(kl, rows, 0.5)) == pytest.approx(0.5 + 3.0 + 0.5)
  assert float(objectives.kl_penalty(kl, rows, 0.0)) == pytest.approx(0.2 + 3.0 + 0.4)
  grad = jax.grad(lambda k: objectives.kl_penalty(k, rows, 0.5))(kl)
  np.testing.assert_allclose(grad, [[0, 0.5, 0], [0, 0.5, 0], [0, 0, 0]])  # floored: no gradient


def test_kl_annealing_is_linear_in_steps():
  weight = lambda step: float(objectives.kl_weight_schedule(0.1, 10.0, 100)(step))
  assert weight(0) == pytest.approx(0.1)
  assert weight(500) == pytest.approx(0.55)
  assert weight(1000) == weight(5000) == pytest.approx(1.0)
  assert float(objectives.kl_weight_schedule(0.1, 0.0, 100)(0)) == 1.0


def test_bfloat16_matmuls_stay_close_to_float32_and_return_float32(problem):
  """The mixed-precision option: bf16 matmul inputs (8 mantissa bits), f32 everything else."""
  hidden, out_w, out_b, targets, mask = problem
  def value_and_grads(dtype):
    fn = lambda h, w, b: objectives.log_likelihood(h, w, b, targets, mask, dtype).sum()
    return jax.value_and_grad(fn, argnums=(0, 1, 2))(hidden, out_w, out_b)
  value32, grads32 = value_and_grads("float32")
  value16, grads16 = value_and_grads("bfloat16")
  assert value16.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in grads16)
  # Each logit is a 4-term dot product of bf16-rounded inputs: relative error ~ 2^-8.
  np.testing.assert_allclose(value16, value32, rtol=2e-2)
  for g16, g32 in zip(grads16, grads32):
    np.testing.assert_allclose(g16, g32, atol=5e-2 * float(jnp.max(jnp.abs(g32))))
  assert not np.array_equal(np.asarray(value16), np.asarray(value32))
