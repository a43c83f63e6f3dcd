"""The short-run Langevin chain of docs/method.md §2, shaped like a blackjax kernel.
Imports jax only.

From z_0, for k = 0 .. K-1:

    z_{k+1} = z_k + (s_k^2 / 2) * grad_z log p(x, z_k) + T * s_k * eps_k,   eps_k ~ N(0, I)

T = 1 is textbook overdamped Langevin with step size s_k^2 / 2; T = 0 is gradient ascent.
The chains of a batch are independent: `value_and_grad_fn` returns each chain's log density
and its own gradient (the gradient of the batch sum, since chain b's density depends on z_b
only). Each step gets its own key, split into the noise and the density's randomness (the
decoder's dropout mask), so every step sees a fresh mask.

No jit here: callers jit (or vmap) the whole computation.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

# (z, rng) -> (log densities (B,), gradients (B, D), aux). aux is any pytree (often ()),
# summed over the chain's steps; it lets a caller collect, e.g., parameter gradients at every
# chain state from the same backward pass that gives the z gradient.
ValueAndGradFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, Any]]


class StepInfo(NamedTuple):
  """Diagnostics of one step, at the state the step started from."""
  log_density: jax.Array  # (B,)
  grad_norm: jax.Array  # (B,) |grad_z log p(x, z_k)|


def per_example_value_and_grad(
    logdensity_fn: Callable[[jax.Array, jax.Array], jax.Array]) -> ValueAndGradFn:
  """Wraps (z, rng) -> log densities (B,) as a ValueAndGradFn with aux = ()."""
  def value_and_grad_fn(z, rng):
    def total(z):
      values = logdensity_fn(z, rng)
      return jnp.sum(values), values
    (_, values), grad = jax.value_and_grad(total, has_aux=True)(z)
    return values, grad, ()
  return value_and_grad_fn


def _update(rng, z, grad, step_size, temperature):
  """z + s^2/2 grad + T s eps, with eps from rng's first half (the second feeds the density)."""
  noise = jax.random.normal(jax.random.split(rng)[0], z.shape, z.dtype)
  return z + 0.5 * step_size ** 2 * grad + temperature * step_size * noise


def langevin_step(rng: jax.Array, z: jax.Array, value_and_grad_fn: ValueAndGradFn,
                  step_size: jax.Array, temperature: jax.Array
                  ) -> tuple[jax.Array, StepInfo, Any]:
  """One update of every chain; returns (z_next, info, aux)."""
  log_density, grad, aux = value_and_grad_fn(z, jax.random.split(rng)[1])
  info = StepInfo(log_density, jnp.sqrt(jnp.sum(grad ** 2, axis=-1)))
  return _update(rng, z, grad, step_size, temperature), info, aux


def short_run_chain(rng: jax.Array, z0: jax.Array, value_and_grad_fn: ValueAndGradFn,
                    step_sizes: jax.Array, temperature: jax.Array
                    ) -> tuple[jax.Array, StepInfo, Any]:
  """K = len(step_sizes) steps from z0 as one lax.scan.

  Returns z_K, the per-step StepInfo stacked on a leading K axis, and aux summed over steps.
  """
  step_sizes = jnp.asarray(step_sizes, z0.dtype)
  keys = jax.random.split(rng, step_sizes.shape[0])
  aux_shape = jax.eval_shape(value_and_grad_fn, z0, keys[0])[2]
  aux0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)

  def body(carry, step):
    z, aux_sum = carry
    key, step_size = step
    z, info, aux = langevin_step(key, z, value_and_grad_fn, step_size, temperature)
    return (z, jax.tree.map(jnp.add, aux_sum, aux)), info

  (z, aux_sum), infos = jax.lax.scan(body, (z0, aux0), (keys, step_sizes))
  return z, infos, aux_sum


# z -> (log densities (B,), gradients (B, D), Hessians (B, D, D)), each chain's own.
ValueGradHessianFn = Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]]


def short_run_chain_with_logdet(rng: jax.Array, z0: jax.Array,
                                value_grad_hessian_fn: ValueGradHessianFn,
                                step_sizes: jax.Array, temperature: jax.Array
                                ) -> tuple[jax.Array, jax.Array, StepInfo]:
  """The chain of `short_run_chain` (same keys, same noise, same z_K) and log|det dz_K/dz_0|.

  For fixed noise the chain is a map z_0 -> z_K with
      dz_{k+1}/dz_k = I + (s_k^2 / 2) H_k,   H_k = Hessian of log p(x, z) at z_k,
  so log|det dz_K/dz_0| = sum_k log|det(I + (s_k^2 / 2) H_k)|: the Jacobian comes from the
  Hessians at the states this very chain visits, in the same pass that moves it. Exact; the
  D x D determinants are cheap next to the Hessians. The density takes no randomness here
  (evaluation: no dropout).

  Returns z_K, log|det| (B,), and the per-step StepInfo.
  """
  step_sizes = jnp.asarray(step_sizes, z0.dtype)
  keys = jax.random.split(rng, step_sizes.shape[0])
  eye = jnp.eye(z0.shape[-1], dtype=z0.dtype)

  def body(carry, step):
    z, logdet = carry
    key, step_size = step
    log_density, grad, hessian = value_grad_hessian_fn(z)
    _, step_logdet = jnp.linalg.slogdet(eye[None] + 0.5 * step_size ** 2 * hessian)
    info = StepInfo(log_density, jnp.sqrt(jnp.sum(grad ** 2, axis=-1)))
    return (_update(key, z, grad, step_size, temperature), logdet + step_logdet), info

  logdet0 = jnp.zeros(z0.shape[:-1], z0.dtype)
  (z, logdet), infos = jax.lax.scan(body, (z0, logdet0), (keys, step_sizes))
  return z, logdet, infos


def temperature_at(epoch: jax.Array, epochs: tuple[float, ...],
                   values: tuple[float, ...]) -> jax.Array:
  """The noise multiplier T at a 1-based epoch: piecewise linear, constant outside the knots."""
  return jnp.interp(jnp.asarray(epoch, jnp.float32), jnp.asarray(epochs, jnp.float32),
                    jnp.asarray(values, jnp.float32))


def prior_weight_at(step: jax.Array, start: float, warmup_epochs: float,
                    steps_per_epoch: int) -> jax.Array:
  """The prior's weight beta in the training chain's target at the batch after `step` updates:
  min(1, start + (step + 1) / (warmup_epochs * steps_per_epoch)), linear per batch (the
  authors' short-Yelp schedule, which raises beta before each batch); 1 if warmup_epochs <= 0."""
  if warmup_epochs <= 0:
    return jnp.float32(1.0)
  increment = 1.0 / (warmup_epochs * steps_per_epoch)
  return jnp.minimum(1.0, start + (jnp.asarray(step, jnp.float32) + 1.0) * increment)
