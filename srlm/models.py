"""The LSTM decoder p(x | z) of SRI_SPEC §1, as a Flax module.

Input at step t is concat(embed(x_{t-1}), z); h_0 = Linear(z), c_0 = 0; dropout on the
embeddings and on the LSTM outputs (training only); logits_t = out_w h_t + out_b. Every
parameter is initialised U(-init_scale, init_scale), as in the authors' code.

`hidden` gives the (dropped-out) LSTM outputs; `__call__` the logits. Training and inference
do not build logits here: `objectives.log_likelihood` takes the hidden states and the output
layer's parameters (`out_w` (V, H), `out_b` (V,)) and fuses the softmax with its gradient.

Speed: the input-to-gate products of all steps are one matmul before the recurrence (z is the
same at every step, so its share is computed once per sentence); only h_{t-1} @ W_h is
sequential. The recurrence runs time-major to avoid transposing activations.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn


def uniform_init(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


class Decoder(nn.Module):
  vocab_size: int
  embed_dim: int
  hidden_dim: int
  latent_dim: int
  dropout: float
  init_scale: float

  def setup(self):
    init = uniform_init(self.init_scale)
    V, E, H, D = self.vocab_size, self.embed_dim, self.hidden_dim, self.latent_dim
    self.embedding = self.param("embedding", init, (V, E))
    # Gate weights (order i, f, g, o) for the input [x_t; z], split into word and latent blocks.
    self.lstm_w_x = self.param("lstm_w_x", init, (E, 4 * H))
    self.lstm_w_z = self.param("lstm_w_z", init, (D, 4 * H))
    self.lstm_w_h = self.param("lstm_w_h", init, (H, 4 * H))
    self.lstm_b = self.param("lstm_b", init, (4 * H,))
    self.init_w = self.param("init_w", init, (D, H))
    self.init_b = self.param("init_b", init, (H,))
    self.out_w = self.param("out_w", init, (V, H))
    self.out_b = self.param("out_b", init, (V,))
    self.embed_dropout = nn.Dropout(self.dropout)
    self.output_dropout = nn.Dropout(self.dropout)

  def hidden(self, z_BxD: jax.Array, inputs_BxT: jax.Array, *,
             deterministic: bool) -> jax.Array:
    """LSTM outputs (T, B, H), time-major, after dropout, for inputs x_0 .. x_{T-1}."""
    x_TxBxE = jnp.take(self.embedding, inputs_BxT.T, axis=0)
    x_TxBxE = self.embed_dropout(x_TxBxE, deterministic=deterministic)
    gates_z_Bx4H = z_BxD @ self.lstm_w_z + self.lstm_b[None, :]
    gates_in_TxBx4H = x_TxBxE @ self.lstm_w_x + gates_z_Bx4H[None]
    w_h_Hx4H = self.lstm_w_h

    def cell(carry, gates_in_Bx4H):
      h_BxH, c_BxH = carry
      i, f, g, o = jnp.split(gates_in_Bx4H + h_BxH @ w_h_Hx4H, 4, axis=-1)
      c_BxH = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
      h_BxH = jax.nn.sigmoid(o) * jnp.tanh(c_BxH)
      return (h_BxH, c_BxH), h_BxH

    h0_BxH = z_BxD @ self.init_w + self.init_b[None, :]
    _, h_TxBxH = jax.lax.scan(cell, (h0_BxH, jnp.zeros_like(h0_BxH)), gates_in_TxBx4H)
    return self.output_dropout(h_TxBxH, deterministic=deterministic)

  def __call__(self, z_BxD: jax.Array, inputs_BxT: jax.Array, *,
               deterministic: bool) -> jax.Array:
    """Logits (B, T, V) of x_1 .. x_T given z and the inputs x_0 .. x_{T-1}."""
    h_BxTxH = jnp.swapaxes(self.hidden(z_BxD, inputs_BxT, deterministic=deterministic), 0, 1)
    return h_BxTxH @ self.out_w.T + self.out_b[None, None, :]


def make_decoder(model_config, vocab_size: int) -> Decoder:
  return Decoder(vocab_size=vocab_size, embed_dim=model_config.embed_dim,
                 hidden_dim=model_config.hidden_dim, latent_dim=model_config.latent_dim,
                 dropout=model_config.dropout, init_scale=model_config.init_scale)
