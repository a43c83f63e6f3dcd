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
