"""log p(z), log p(x | z) and log p(x, z) of docs/method.md §1, per sentence.

Sign convention: these are log densities (higher is better); losses negate them. Every function
returns one value per sentence, shape (B,): summed over latent dimensions or tokens, never
averaged. Padding (mask 0) contributes exactly 0, to the value and to every gradient.

    log p(z)     = -1/2 |z|^2 - D/2 log(2 pi)
    log p(x | z) = sum_t mask_t [ logits_t[x_t] - logsumexp_v logits_t[v] ],
                   logits_t = out_w h_t + out_b
    log p(x, z)  = log p(x | z) + log p(z)

`log_likelihood` is the hot spot of training and inference (the short-run chain evaluates its
gradient K times per batch), so it has a hand-written VJP with the same value and gradients as
automatic differentiation, cheaper:
  * the target logits come from gathered rows of out_w (never a (B, L, V) gather or one-hot
    scatter);
  * the forward pass keeps exp(logits - max) and its row sums; the backward pass multiplies by
    them and rescales (B, L, H)-sized results, so the softmax is never a separate pass.
"""

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
import optax

from srlm.models import matmul

Batch = dict[str, jax.Array]


def log_prior(z_BxD: jax.Array) -> jax.Array:
  """log N(z; 0, I), per sentence."""
  return -0.5 * jnp.sum(z_BxD ** 2, axis=-1) - 0.5 * z_BxD.shape[-1] * math.log(2 * math.pi)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def log_likelihood(hidden_LxBxH: jax.Array, out_w_VxH: jax.Array, out_b_V: jax.Array,
                   targets_BxL: jax.Array, mask_BxL: jax.Array,
                   compute_dtype: str = "float32") -> jax.Array:
  """sum_t mask_t log softmax(out_w h_t + out_b)[target_t], per sentence (B,).

  hidden is time-major (L, B, H), as `Decoder.hidden` returns it; targets and mask are (B, L).
  compute_dtype "bfloat16" rounds the inputs of the two (N x H x V) matmuls, forward and
  backward, to bf16; they accumulate in f32, and the softmax is f32.
  """
  return _log_likelihood_fwd(hidden_LxBxH, out_w_VxH, out_b_V, targets_BxL, mask_BxL,
                             compute_dtype)[0]


def _log_likelihood_fwd(hidden_LxBxH, out_w_VxH, out_b_V, targets_BxL, mask_BxL,
                        compute_dtype="float32"):
  L, B, H = hidden_LxBxH.shape
  h_NxH = hidden_LxBxH.reshape(L * B, H)
  targets_N = targets_BxL.T.reshape(L * B)
  keep_N = mask_BxL.T.reshape(L * B) > 0
  logits_NxV = matmul(h_NxH, out_w_VxH.T, compute_dtype) + out_b_V[None, :]
  max_N = jax.lax.stop_gradient(jnp.max(logits_NxV, axis=-1))
  exp_NxV = jnp.exp(logits_NxV - max_N[:, None])
  sum_N = jnp.sum(exp_NxV, axis=-1)
  target_logits_N = jnp.sum(h_NxH * out_w_VxH[targets_N], axis=-1) + out_b_V[targets_N]
  token_log_probs_N = jnp.where(keep_N, target_logits_N - max_N - jnp.log(sum_N), 0.0)
  value_B = jnp.sum(token_log_probs_N.reshape(L, B), axis=0)
  return value_B, (h_NxH, out_w_VxH, exp_NxV, sum_N, targets_N, keep_N, (L, B))


def _log_likelihood_bwd(compute_dtype, residuals, g_B):
  h_NxH, out_w_VxH, exp_NxV, sum_N, targets_N, keep_N, (L, B) = residuals
  # d value / d logits_n = g_n (onehot(target_n) - exp_n / sum_n) on kept tokens.
  g_N = jnp.where(keep_N, jnp.broadcast_to(g_B, (L, B)).reshape(L * B), 0.0)
  scale_N = g_N / sum_N
  target_w_NxH = out_w_VxH[targets_N]
  d_h_NxH = (g_N[:, None] * target_w_NxH
             - scale_N[:, None] * matmul(exp_NxV, out_w_VxH, compute_dtype))
  d_w_VxH = (-matmul(exp_NxV.T, scale_N[:, None] * h_NxH, compute_dtype)).at[targets_N].add(
      g_N[:, None] * h_NxH)
  d_b_V = (-(scale_N @ exp_NxV)).at[targets_N].add(g_N)
  return d_h_NxH.reshape(L, B, -1), d_w_VxH, d_b_V, None, None


log_likelihood.defvjp(_log_likelihood_fwd, _log_likelihood_bwd)


def decoder_log_likelihood(model: nn.Module, params, z_BxD: jax.Array, batch: Batch,
                           dropout_rng: jax.Array | None) -> jax.Array:
  """log p(x | z) per sentence under a `models.Decoder`; dropout is on iff dropout_rng is set."""
  deterministic = dropout_rng is None
  hidden_LxBxH = model.apply({"params": params}, z_BxD, batch["inputs"],
                             deterministic=deterministic, method="hidden",
                             rngs=None if deterministic else {"dropout": dropout_rng})
  return log_likelihood(hidden_LxBxH, params["out_w"], params["out_b"], batch["targets"],
                        batch["mask"], model.compute_dtype)


def nll_from_log_weights(log_w_MxB: jax.Array) -> jax.Array:
  """The importance-sampled -log p(x) per sentence from M log weights log p(x, z_m) - log
  q(z_m | x) each: -(logsumexp_m log w_m - log M), (B,)."""
  return -(jax.nn.logsumexp(log_w_MxB, axis=0) - math.log(log_w_MxB.shape[0]))


def log_joint(log_likelihood_fn: Callable[[jax.Array], jax.Array],
              z_BxD: jax.Array) -> jax.Array:
  """log p(x | z) + log p(z) per sentence; log_likelihood_fn maps z (B, D) to (B,)."""
  return log_likelihood_fn(z_BxD) + log_prior(z_BxD)


# --- The Gaussian VAE baseline (docs/method.md §5) ------------------------------------------

def gaussian_kl(mean_BxD: jax.Array, logvar_BxD: jax.Array) -> jax.Array:
  """KL(N(mean, diag exp(logvar)) || N(0, I)) per sentence and dimension, (B, D):
  1/2 (mean^2 + exp(logvar) - 1 - logvar)."""
  return 0.5 * (mean_BxD ** 2 + jnp.exp(logvar_BxD) - 1.0 - logvar_BxD)


def clip_by_global_norm(tree, max_norm: float):
  """tree scaled to a global norm of max_norm if its norm is above it, else unchanged."""
  norm = optax.tree.norm(tree)
  scale = jnp.where(norm > max_norm, max_norm / norm, 1.0)
  return jax.tree.map(lambda g: g * scale, tree)


def reparameterize(mean_BxD: jax.Array, logvar_BxD: jax.Array, key: jax.Array) -> jax.Array:
  """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I): a draw of N(mean, diag(exp(logvar)))
  differentiable in mean and logvar."""
  return mean_BxD + jnp.exp(0.5 * logvar_BxD) * jax.random.normal(key, mean_BxD.shape)


def log_normal_diag(z_BxD: jax.Array, mean_BxD: jax.Array, logvar_BxD: jax.Array) -> jax.Array:
  """log N(z; mean, diag exp(logvar)), per sentence."""
  return -0.5 * jnp.sum((z_BxD - mean_BxD) ** 2 * jnp.exp(-logvar_BxD) + logvar_BxD
                        + math.log(2 * math.pi), axis=-1)


def kl_penalty(kl_BxD: jax.Array, sentence_mask_B: jax.Array, free_bits: float) -> jax.Array:
  """The ELBO's KL term for a batch: sum_d max(free_bits, mean over sentences of KL_d).

  With free_bits = 0 this is the plain mean KL per sentence. The floor is per dimension on the
  batch mean (Li et al. 2019; Kingma et al. 2016): below it a dimension's KL has no gradient.
  """
  num_sentences = jnp.maximum(jnp.sum(sentence_mask_B), 1.0)
  mean_kl_D = jnp.sum(kl_BxD * sentence_mask_B[:, None], axis=0) / num_sentences
  return jnp.sum(jnp.maximum(mean_kl_D, free_bits))


def kl_weight_schedule(kl_start: float, warmup_epochs: float,
                       steps_per_epoch: int) -> optax.Schedule:
  """Linear KL annealing as an optax schedule of the decoder step: kl_start at step 0, 1 after
  warmup_epochs epochs and from then on (He et al. 2019); 1 throughout if warmup_epochs <= 0."""
  if warmup_epochs <= 0:
    return optax.constant_schedule(1.0)
  return optax.linear_schedule(kl_start, 1.0, warmup_epochs * steps_per_epoch)
