"""Decoding sentences from latent codes (docs/method.md §6): greedy, temperature and top-k
sampling.

`decode` runs the decoder one token at a time from `<s>` as one `lax.scan` of fixed length
(jit-friendly); after a sentence emits `</s>` it emits `<pad>`. `to_text` turns the ids back
into words. Prior samples are `decode` of z ~ N(0, I); reconstructions and interpolations
decode inferred codes.
"""

import jax
import jax.numpy as jnp

from srlm.data.vocab import BOS_ID, EOS_ID, PAD_ID, Vocabulary
from srlm.models import Decoder


def choose_tokens(logits_BxV: jax.Array, rng: jax.Array, temperature: float,
                  top_k: int) -> jax.Array:
  """Greedy (temperature 0) or a sample of softmax(logits / temperature), restricted to the
  top_k most likely words when top_k > 0."""
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV / temperature
  if top_k:
    kth_best_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_best_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


def decode(model: Decoder, params, z_BxD: jax.Array, rng: jax.Array, max_length: int,
           temperature: float = 0.0, top_k: int = 0, min_length: int = 0) -> jax.Array:
  """Token ids (B, max_length) generated after <s> from each z: words, then </s>, then
  <pad>. temperature 0 is greedy decoding. `<pad>`, `<s>` are never generated, nor `</s>`
  before min_length words (a weak model's likeliest first token is often `</s>`)."""
  variables = {"params": params}
  state = model.apply(variables, z_BxD, method="start")
  batch_size = z_BxD.shape[0]
  forbidden_V = jnp.zeros((model.vocab_size,), bool).at[jnp.array([PAD_ID, BOS_ID])].set(True)

  def step(carry, inputs):
    state, tokens_B, done_B = carry
    key, position = inputs
    state, logits_BxV = model.apply(variables, state, z_BxD, tokens_B, method="step")
    forbidden_now_V = forbidden_V.at[EOS_ID].set(position < min_length)
    logits_BxV = jnp.where(forbidden_now_V[None, :], -jnp.inf, logits_BxV)
    next_B = choose_tokens(logits_BxV, key, temperature, top_k)
    next_B = jnp.where(done_B, PAD_ID, next_B)
    return (state, next_B, done_B | (next_B == EOS_ID)), next_B

  start = (state, jnp.full((batch_size,), BOS_ID, jnp.int32), jnp.zeros((batch_size,), bool))
  _, tokens_LxB = jax.lax.scan(step, start, (jax.random.split(rng, max_length),
                                             jnp.arange(max_length)))
  return tokens_LxB.T


def to_text(vocab: Vocabulary, tokens_BxL) -> list[str]:
  """The words of each row up to its first </s>."""
  return [vocab.decode(row) for row in jax.device_get(tokens_BxL)]


def interpolate(z_a_D: jax.Array, z_b_D: jax.Array, num_points: int) -> jax.Array:
  """num_points codes evenly spaced on the segment from z_a to z_b, ends included: (N, D)."""
  weights_N = jnp.linspace(0.0, 1.0, num_points)[:, None]
  return (1.0 - weights_N) * z_a_D[None, :] + weights_N * z_b_D[None, :]
