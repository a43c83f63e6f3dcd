"""The LSTM decoder p(x | z) of docs/method.md §1, as a Flax module.

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


def matmul(a: jax.Array, b: jax.Array, compute_dtype: str = "float32") -> jax.Array:
  """a @ b with its inputs rounded to compute_dtype and f32 accumulation and result (the
  mixed-precision option: bf16 matmuls on GPU/TPU, everything else f32)."""
  if compute_dtype == "float32":
    return a @ b
  return jnp.matmul(a.astype(compute_dtype), b.astype(compute_dtype),
                    preferred_element_type=jnp.float32)


def lstm_cell(h_BxH: jax.Array, c_BxH: jax.Array, gates_in_Bx4H: jax.Array,
              w_h_Hx4H: jax.Array, compute_dtype: str = "float32"
              ) -> tuple[jax.Array, jax.Array]:
  """One LSTM step (gate order i, f, g, o) given the input's share of the gates."""
  i, f, g, o = jnp.split(gates_in_Bx4H + matmul(h_BxH, w_h_Hx4H, compute_dtype), 4, axis=-1)
  c_BxH = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
  return jax.nn.sigmoid(o) * jnp.tanh(c_BxH), c_BxH


def lstm_recurrence(gates_in_LxBx4H: jax.Array, w_h_Hx4H: jax.Array, h0_BxH: jax.Array,
                    keep_LxB: jax.Array | None = None, compute_dtype: str = "float32",
                    unroll: int = 1) -> tuple[jax.Array, jax.Array]:
  """LSTM steps over precomputed input gates, time-major.

  Returns (all h_t (L, B, H), the final h). Where keep_LxB is 0 the state is carried over
  unchanged, so the final h is the one at each sentence's last real token. unroll is
  lax.scan's (the same numbers at any value); rolled (1) is the fastest on CPU
  (benchmarks/lstm_unroll.py), see SCAN_UNROLL.
  """
  def step(carry, inputs):
    h_BxH, c_BxH = carry
    gates_in_Bx4H, keep_B = inputs
    new_h, new_c = lstm_cell(h_BxH, c_BxH, gates_in_Bx4H, w_h_Hx4H, compute_dtype)
    if keep_B is not None:
      new_h = jnp.where(keep_B[:, None], new_h, h_BxH)
      new_c = jnp.where(keep_B[:, None], new_c, c_BxH)
    return (new_h, new_c), new_h

  (h_last, _), h_LxBxH = jax.lax.scan(step, (h0_BxH, jnp.zeros_like(h0_BxH)),
                                      (gates_in_LxBx4H, keep_LxB), unroll=unroll)
  return h_LxBxH, h_last


# The recurrence's lax.scan unroll factor per backend, for --config.model.scan_unroll=0. CPU:
# rolled, 1.2-1.5x faster than unrolled (benchmarks/lstm_unroll.py). GPU and TPU: rolled until
# the hardware report measures the factors there (the H200's 9.5 us per dependent cell step
# in a bare scan is a latency floor that unrolling may lower).
SCAN_UNROLL = {"cpu": 1, "gpu": 1, "tpu": 1}


def scan_unroll(setting: int) -> int:
  """--config.model.scan_unroll: a factor >= 1 as given; 0, this backend's SCAN_UNROLL."""
  return setting or SCAN_UNROLL.get(jax.default_backend(), 1)


class Decoder(nn.Module):
  vocab_size: int
  embed_dim: int
  hidden_dim: int
  latent_dim: int
  dropout: float
  init_scale: float
  compute_dtype: str = "float32"
  unroll: int = 1  # the recurrence's lax.scan unroll factor (same numbers, other speed)

  def setup(self):
    init = uniform_init(self.init_scale)
    V, E, H, D = self.vocab_size, self.embed_dim, self.hidden_dim, self.latent_dim
    self.embedding = self.param("embedding", init, (V, E))
    # Gate weights (order i, f, g, o) for the input [x_t; z], split into word and latent blocks.
    self.lstm_w_x = self.param("lstm_w_x", init, (E, 4 * H))
    # The LSTM-LM (D = 0) has no z weights (and Orbax saves no empty arrays). Creation order
    # fixes each parameter's initial values: keep it.
    if D:
      self.lstm_w_z = self.param("lstm_w_z", init, (D, 4 * H))
    self.lstm_w_h = self.param("lstm_w_h", init, (H, 4 * H))
    self.lstm_b = self.param("lstm_b", init, (4 * H,))
    if D:
      self.init_w = self.param("init_w", init, (D, H))
    self.init_b = self.param("init_b", init, (H,))
    self.out_w = self.param("out_w", init, (V, H))
    self.out_b = self.param("out_b", init, (V,))
    self.embed_dropout = nn.Dropout(self.dropout)
    self.output_dropout = nn.Dropout(self.dropout)

  def _latent_gates_and_h0(self, z_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """z's share of every step's gates (with the bias), and h_0 = Linear(z)."""
    batch_size = z_BxD.shape[0]
    gates_z_Bx4H = jnp.broadcast_to(self.lstm_b[None, :], (batch_size, self.lstm_b.shape[0]))
    h0_BxH = jnp.broadcast_to(self.init_b[None, :], (batch_size, self.init_b.shape[0]))
    if self.latent_dim:
      gates_z_Bx4H = gates_z_Bx4H + matmul(z_BxD, self.lstm_w_z, self.compute_dtype)
      h0_BxH = h0_BxH + matmul(z_BxD, self.init_w, self.compute_dtype)
    return gates_z_Bx4H, h0_BxH

  def hidden(self, z_BxD: jax.Array, inputs_BxL: jax.Array, *,
             deterministic: bool) -> jax.Array:
    """LSTM outputs (L, B, H), time-major, after dropout, for inputs x_0 .. x_{L-1}."""
    x_LxBxE = jnp.take(self.embedding, inputs_BxL.T, axis=0)
    x_LxBxE = self.embed_dropout(x_LxBxE, deterministic=deterministic)
    gates_z_Bx4H, h0_BxH = self._latent_gates_and_h0(z_BxD)
    gates_in_LxBx4H = (matmul(x_LxBxE, self.lstm_w_x, self.compute_dtype)
                       + gates_z_Bx4H[None])
    h_LxBxH, _ = lstm_recurrence(gates_in_LxBx4H, self.lstm_w_h, h0_BxH,
                                 compute_dtype=self.compute_dtype, unroll=self.unroll)
    return self.output_dropout(h_LxBxH, deterministic=deterministic)

  def start(self, z_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The state (h_0, c_0) that generation starts from (dropout off)."""
    _, h0_BxH = self._latent_gates_and_h0(z_BxD)
    return h0_BxH, jnp.zeros_like(h0_BxH)

  def step(self, state: tuple[jax.Array, jax.Array], z_BxD: jax.Array,
           tokens_B: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """One generation step (dropout off): feeds x_t, returns the new state and logits (B, V)
    of x_{t+1}. The same cell and weights as `hidden`."""
    gates_z_Bx4H, _ = self._latent_gates_and_h0(z_BxD)
    gates_in_Bx4H = matmul(jnp.take(self.embedding, tokens_B, axis=0), self.lstm_w_x,
                           self.compute_dtype) + gates_z_Bx4H
    h_BxH, c_BxH = lstm_cell(*state, gates_in_Bx4H, self.lstm_w_h, self.compute_dtype)
    return (h_BxH, c_BxH), (matmul(h_BxH, self.out_w.T, self.compute_dtype)
                            + self.out_b[None, :])

  def __call__(self, z_BxD: jax.Array, inputs_BxL: jax.Array, *,
               deterministic: bool) -> jax.Array:
    """Logits (B, L, V) of x_1 .. x_L given z and the inputs x_0 .. x_{L-1}."""
    h_BxLxH = jnp.swapaxes(self.hidden(z_BxD, inputs_BxL, deterministic=deterministic), 0, 1)
    return matmul(h_BxLxH, self.out_w.T, self.compute_dtype) + self.out_b[None, None, :]


class Encoder(nn.Module):
  """The VAE baseline's inference network q(z | x) = N(mean, diag exp(logvar)).

  An LSTM of the decoder's sizes reads w_1 .. w_n </s>; a linear map of its last real hidden
  state gives mean and logvar (He et al. 2019). Initialised U(-init_scale, init_scale).
  """
  vocab_size: int
  embed_dim: int
  hidden_dim: int
  latent_dim: int
  init_scale: float
  compute_dtype: str = "float32"
  unroll: int = 1

  @nn.compact
  def __call__(self, tokens_BxL: jax.Array, mask_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    init = uniform_init(self.init_scale)
    V, E, H, D = self.vocab_size, self.embed_dim, self.hidden_dim, self.latent_dim
    embedding_VxE = self.param("embedding", init, (V, E))
    w_x_Ex4H = self.param("lstm_w_x", init, (E, 4 * H))
    w_h_Hx4H = self.param("lstm_w_h", init, (H, 4 * H))
    b_4H = self.param("lstm_b", init, (4 * H,))
    w_out_Hx2D = self.param("out_w", init, (H, 2 * D))
    b_out_2D = self.param("out_b", init, (2 * D,))
    x_LxBxE = jnp.take(embedding_VxE, tokens_BxL.T, axis=0)
    gates_in_LxBx4H = matmul(x_LxBxE, w_x_Ex4H, self.compute_dtype) + b_4H[None, None, :]
    h0_BxH = jnp.zeros((tokens_BxL.shape[0], H), x_LxBxE.dtype)
    _, h_last_BxH = lstm_recurrence(gates_in_LxBx4H, w_h_Hx4H, h0_BxH, mask_BxL.T > 0,
                                    self.compute_dtype, self.unroll)
    mean_BxD, logvar_BxD = jnp.split(
        matmul(h_last_BxH, w_out_Hx2D, self.compute_dtype) + b_out_2D[None, :], 2, axis=-1)
    return mean_BxD, logvar_BxD


def make_decoder(model_config, vocab_size: int, latent_dim: int) -> Decoder:
  """The decoder of config.model's sizes with a latent of latent_dim (0: no latent)."""
  return Decoder(vocab_size=vocab_size, embed_dim=model_config.embed_dim,
                 hidden_dim=model_config.hidden_dim, latent_dim=latent_dim,
                 dropout=model_config.dropout, init_scale=model_config.init_scale,
                 compute_dtype=model_config.compute_dtype,
                 unroll=scan_unroll(model_config.scan_unroll))


def make_encoder(model_config, vocab_size: int) -> Encoder:
  """An inference network q(z | x) of config.model's sizes (the VAE baselines')."""
  return Encoder(vocab_size=vocab_size, embed_dim=model_config.embed_dim,
                 hidden_dim=model_config.hidden_dim, latent_dim=model_config.latent_dim,
                 init_scale=model_config.init_scale, compute_dtype=model_config.compute_dtype,
                 unroll=scan_unroll(model_config.scan_unroll))
