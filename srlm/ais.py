"""Annealed importance sampling (docs/method.md §9): an estimate of log p(x) for any decoder
that needs no proposal of the method's own, and the reverse chain that BDMC bounds it with.
Imports jax, numpy and srlm.objectives only.

The path. f_b(z) = log p(z) + b log p(x | z) for b from b_0 = 0 (the prior, whose samples are
exact) to b_N = 1 (the unnormalised posterior, whose normaliser is p(x)), over the N + 1 values
of a sigmoid schedule (Grosse, Maddison, Salakhutdinov 2013): dense at both ends, where the
distributions change fastest relative to b.

One chain. z_0 ~ p(z); for t = 1 .. N:
    log w += (b_t - b_{t-1}) log p(x | z_{t-1})          (= f_t(z_{t-1}) - f_{t-1}(z_{t-1}))
    z_t ~ T_t(z_{t-1})   for t < N, a transition that leaves f_t's distribution invariant.
Then E[w] = p(x) (Neal 2001). With C independent chains per sentence,
    -log p(x) ~= -(logsumexp_c log w_c - log C),
a stochastic upper bound on -log p(x) (Jensen), tighter as N and C grow. N = 1 is plain
importance sampling with the prior as proposal. The same chain run from b = 1 down to b = 0,
started at an exact posterior sample, gives w with E[w] = 1/p(x): BDMC's lower bound
(Grosse, Ghahramani, Adams 2015).

The transition. Hamiltonian Monte Carlo with L leapfrog steps and an identity mass matrix,
corrected by Metropolis-Hastings (L = 1 is MALA). Each chain adapts its own step size after
every transition, as Wu et al. (2017) do: times 1.02 while its recent acceptance rate is above
the target (0.65), times 0.98 while below, kept within [1e-4, 0.5]. The
adaptation makes a transition depend on the chain's past, which strictly breaks the argument
for E[w] = p(x); the step size changes by 2% a step, and the linear-Gaussian test in
tests/ais_test.py checks the estimate against the exact log p(x).

The cost. The state caches log p(x | z) and its gradient at z, from which f_b and its gradient
at any b cost O(D): one decoder gradient per leapfrog step, none for changing b. BlackJAX's
`hmc` kernel (blackjax.mcmc.hmc) caches the density and gradient of the one target it was
built for; on a path whose target changes at every transition it would have to re-evaluate
the decoder to re-initialise its state at each new b (twice the decoder work at L = 1), and its
state does not keep the likelihood apart from the prior. So the transition is written here, in
its manner (a pure step function over a NamedTuple state, vmappable, no jit inside).
"""

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from srlm import objectives

# z (N, D) -> (log p(x | z) (N,), its gradient in z (N, D)), each chain's own.
LikelihoodFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]

TARGET_ACCEPTANCE = 0.65
MIN_STEP_SIZE, MAX_STEP_SIZE = 1e-4, 0.5
STEP_SIZE_UP, STEP_SIZE_DOWN = 1.02, 0.98
# The acceptance rate a chain adapts on: an exponential moving average of its acceptance
# probabilities over about the last 1 / (1 - decay) = 10 transitions, so the step size follows
# the target as it narrows (a mean over the whole chain, as Wu et al.'s, lags behind).
ACCEPTANCE_DECAY = 0.9
# The sigmoid schedule's range: b_t follows sigmoid(u) for u evenly spaced in
# [-SCHEDULE_SHARPNESS, SCHEDULE_SHARPNESS], rescaled to run from exactly 0 to exactly 1.
SCHEDULE_SHARPNESS = 4.0


def per_chain_value_and_grad(log_likelihood_fn: Callable[[jax.Array], jax.Array]
                             ) -> LikelihoodFn:
  """log_likelihood_fn maps z (N, D) to (N,) independent per-chain values; the gradient of
  their sum is each chain's own gradient."""
  def value_and_grad(z_NxD):
    def total(z):
      values = log_likelihood_fn(z)
      return jnp.sum(values), values
    (_, values), grad = jax.value_and_grad(total, has_aux=True)(z_NxD)
    return values, grad
  return value_and_grad


def sigmoid_schedule(num_steps: int) -> np.ndarray:
  """b_0 = 0 < b_1 < ... < b_N = 1 (N + 1 values, float32); N = 1 is (0, 1). A constant of
  the compiled chain, so computed on the host."""
  if num_steps < 1:
    raise ValueError(f"AIS needs at least 1 step, got {num_steps}")
  u = np.linspace(-SCHEDULE_SHARPNESS, SCHEDULE_SHARPNESS, num_steps + 1)
  s = 1.0 / (1.0 + np.exp(-u))
  betas = (s - s[0]) / (s[-1] - s[0])
  betas[0], betas[-1] = 0.0, 1.0
  return betas.astype(np.float32)


class State(NamedTuple):
  """The chains' positions and the likelihood cached there."""
  z: jax.Array  # (N, D)
  log_likelihood: jax.Array  # (N,) log p(x | z)
  grad: jax.Array  # (N, D) its gradient in z


def init(z_NxD: jax.Array, likelihood_fn: LikelihoodFn) -> State:
  return State(z_NxD, *likelihood_fn(z_NxD))


def _log_target(z_NxD, log_likelihood_N, beta):
  return objectives.log_prior(z_NxD) + beta * log_likelihood_N


def hmc_step(rng: jax.Array, state: State, beta: jax.Array, step_size_N: jax.Array,
             num_leapfrog: int, likelihood_fn: LikelihoodFn
             ) -> tuple[State, jax.Array]:
  """One MH-corrected HMC transition of every chain, invariant for f_beta; each chain has its
  own step size. Returns the new state and each chain's acceptance probability (N,)."""
  momentum_key, accept_key = jax.random.split(rng)
  eps_Nx1 = step_size_N[:, None]
  momentum0 = jax.random.normal(momentum_key, state.z.shape, state.z.dtype)

  def grad_target(z, grad_log_likelihood):  # grad f_beta = -z + beta grad log p(x | z)
    return -z + beta * grad_log_likelihood

  def leapfrog(carry, _):
    z, momentum, log_likelihood, grad = carry
    momentum = momentum + 0.5 * eps_Nx1 * grad_target(z, grad)
    z = z + eps_Nx1 * momentum
    log_likelihood, grad = likelihood_fn(z)
    momentum = momentum + 0.5 * eps_Nx1 * grad_target(z, grad)
    return (z, momentum, log_likelihood, grad), None

  (z, momentum, log_likelihood, grad), _ = jax.lax.scan(
      leapfrog, (state.z, momentum0, state.log_likelihood, state.grad), None,
      length=num_leapfrog)
  log_ratio = (_log_target(z, log_likelihood, beta) - 0.5 * jnp.sum(momentum ** 2, -1)
               - _log_target(state.z, state.log_likelihood, beta)
               + 0.5 * jnp.sum(momentum0 ** 2, -1))
  # A trajectory that diverged (NaN or inf) is rejected.
  log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
  accept_prob = jnp.exp(jnp.minimum(log_ratio, 0.0))
  accept = jnp.log(jax.random.uniform(accept_key, log_ratio.shape)) < log_ratio
  new = State(z, log_likelihood, grad)
  return jax.tree.map(lambda n, o: jnp.where(
      accept.reshape(accept.shape + (1,) * (n.ndim - 1)), n, o), new, state), accept_prob


class Result(NamedTuple):
  log_weights: jax.Array  # (N,) log w of each chain
  state: State  # where each chain ended (after the last transition)
  acceptance_rate: jax.Array  # (N,) mean acceptance probability over the transitions
  step_size: jax.Array  # (N,) each chain's step size at the end


def anneal(rng: jax.Array, z0_NxD: jax.Array, likelihood_fn: LikelihoodFn, betas: jax.Array,
           num_leapfrog: int = 1, initial_step_size: float = 0.05,
           target_acceptance: float = TARGET_ACCEPTANCE) -> Result:
  """AIS along `betas` (b_0 .. b_N) from z0 as one lax.scan: N weight updates, N - 1
  transitions (at b_1 .. b_{N-1}). Forward (betas from 0 to 1, z0 ~ p(z)): E[w] = p(x).
  Reverse (betas from 1 to 0, z0 an exact posterior sample): E[w] = 1 / p(x)."""
  betas = jnp.asarray(betas, z0_NxD.dtype)
  state = init(z0_NxD, likelihood_fn)
  num_chains = z0_NxD.shape[0]
  log_w = (betas[1] - betas[0]) * state.log_likelihood
  step_size = jnp.full((num_chains,), initial_step_size, z0_NxD.dtype)
  zeros = jnp.zeros((num_chains,), z0_NxD.dtype)

  def body(carry, inputs):
    state, log_w, step_size, recent_acceptance, accept_sum = carry
    key, beta, next_beta = inputs
    state, accept_prob = hmc_step(key, state, beta, step_size, num_leapfrog, likelihood_fn)
    recent_acceptance = (ACCEPTANCE_DECAY * recent_acceptance
                         + (1 - ACCEPTANCE_DECAY) * accept_prob)
    step_size = jnp.clip(
        step_size * jnp.where(recent_acceptance > target_acceptance, STEP_SIZE_UP,
                              STEP_SIZE_DOWN), MIN_STEP_SIZE, MAX_STEP_SIZE)
    log_w = log_w + (next_beta - beta) * state.log_likelihood
    return (state, log_w, step_size, recent_acceptance, accept_sum + accept_prob), None

  num_transitions = betas.shape[0] - 2
  keys = jax.random.split(rng, max(num_transitions, 1))[:num_transitions]
  (state, log_w, step_size, _, accept_sum), _ = jax.lax.scan(
      body, (state, log_w, step_size, zeros + target_acceptance, zeros),
      (keys, betas[1:-1], betas[2:]))
  return Result(log_w, state, accept_sum / max(num_transitions, 1), step_size)


def log_mean_exp(log_w_CxB: jax.Array) -> jax.Array:
  """log of the mean over the chains (axis 0) of w, (B,)."""
  return jax.nn.logsumexp(log_w_CxB, axis=0) - math.log(log_w_CxB.shape[0])


def effective_sample_size(log_w_CxB: jax.Array) -> jax.Array:
  """(sum_c w_c)^2 / sum_c w_c^2 per sentence (B,): from 1 (one chain carries all the weight)
  to C (equal weights)."""
  normalised = jax.nn.softmax(log_w_CxB, axis=0)
  return 1.0 / jnp.sum(normalised ** 2, axis=0)


# (params, z (B, D), batch) -> log p(x | z) (B,): a methods.Latent.log_likelihood.
DecoderLikelihood = Callable[[dict, jax.Array, dict], jax.Array]


def _chains_likelihood(log_likelihood: DecoderLikelihood, params, batch: dict,
                       num_chains: int) -> LikelihoodFn:
  """The LikelihoodFn of num_chains chains per sentence of the batch, chain-major: row
  c * B + b of z is chain c of sentence b."""
  tiled = {key: jnp.tile(batch[key], (num_chains, 1)) for key in ("inputs", "targets", "mask")}
  return per_chain_value_and_grad(lambda z: log_likelihood(params, z, tiled))


def make_nll_step(log_likelihood: DecoderLikelihood, latent_dim: int, num_steps: int,
                  num_chains: int, num_leapfrog: int, initial_step_size: float
                  ) -> Callable[[dict, dict, jax.Array], dict]:
  """(params, batch, rng) -> per-sentence (B,) AIS results of C chains from the prior:
    nll   -(logsumexp_c log w_c - log C)
    rec   -log p(x | z) at the chains' ends, averaged with their normalised weights
    kl    nll - rec: KL(posterior || prior), as both are estimated
    ess, acceptance_rate (mean over the chains), and the posterior's weighted mean and
    variance (B, D) from the chains' ends (for AU and MI).
  The weighted chain ends are importance samples of the posterior (Neal 2001)."""
  betas = sigmoid_schedule(num_steps)

  def ais_nll_step(params, batch, rng):
    batch_size = batch["targets"].shape[0]
    likelihood_fn = _chains_likelihood(log_likelihood, params, batch, num_chains)
    prior_key, chain_key = jax.random.split(rng)
    z0 = jax.random.normal(prior_key, (num_chains * batch_size, latent_dim))
    result = anneal(chain_key, z0, likelihood_fn, betas, num_leapfrog, initial_step_size)
    log_w_CxB = result.log_weights.reshape(num_chains, batch_size)
    weights_CxB = jax.nn.softmax(log_w_CxB, axis=0)
    nll = -log_mean_exp(log_w_CxB)
    rec = -jnp.sum(weights_CxB * result.state.log_likelihood.reshape(num_chains, batch_size),
                   axis=0)
    z_CxBxD = result.state.z.reshape(num_chains, batch_size, latent_dim)
    mean = jnp.sum(weights_CxB[..., None] * z_CxBxD, axis=0)
    variance = jnp.sum(weights_CxB[..., None] * (z_CxBxD - mean[None]) ** 2, axis=0)
    return {"nll": nll, "rec": rec, "kl": nll - rec,
            "ess": effective_sample_size(log_w_CxB),
            "acceptance_rate": jnp.mean(
                result.acceptance_rate.reshape(num_chains, batch_size), axis=0),
            "posterior_mean": mean, "posterior_variance": variance}

  return ais_nll_step


def make_reverse_step(log_likelihood: DecoderLikelihood, num_steps: int, num_chains: int,
                      num_leapfrog: int, initial_step_size: float
                      ) -> Callable[[dict, dict, jax.Array, jax.Array], dict]:
  """(params, batch, z_star (B, D), rng) -> {"nll_lower", "acceptance_rate"} (B,): C chains
  from b = 1 to b = 0 started at z_star, each sentence's exact posterior sample (the code that
  generated it); logsumexp_c log w_c - log C is a stochastic lower bound on -log p(x)."""
  betas = sigmoid_schedule(num_steps)[::-1]

  def ais_reverse_step(params, batch, z_star_BxD, rng):
    batch_size = batch["targets"].shape[0]
    likelihood_fn = _chains_likelihood(log_likelihood, params, batch, num_chains)
    result = anneal(rng, jnp.tile(z_star_BxD, (num_chains, 1)), likelihood_fn, betas,
                    num_leapfrog, initial_step_size)
    return {"nll_lower": log_mean_exp(result.log_weights.reshape(num_chains, batch_size)),
            "acceptance_rate": jnp.mean(
                result.acceptance_rate.reshape(num_chains, batch_size), axis=0)}

  return ais_reverse_step
