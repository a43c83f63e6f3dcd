"""Decoding: agreement with the teacher-forced decoder, copying a memorised corpus,
sampling rules, interpolation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from srlm import objectives
from srlm import sampling
from srlm.data.vocab import BOS_ID, EOS_ID, PAD_ID, build_vocabulary
from srlm.data import pipeline
from srlm.models import Decoder

CORPUS = ["the cat sat on the mat", "a dog ran far away", "birds sing"]


def _memorised_decoder():
  """A decoder trained until each sentence is the greedy decoding of its own fixed code."""
  vocab = build_vocabulary([s.split() for s in CORPUS])
  model = Decoder(vocab_size=len(vocab), embed_dim=16, hidden_dim=32, latent_dim=2,
                  dropout=0.0, init_scale=0.1)
  codes = jnp.array([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.0]])
  batch = pipeline.make_batch([vocab.encode(s.split()) for s in CORPUS], 9, 3)
  params = model.init(jax.random.key(0), codes, batch["inputs"], deterministic=True)["params"]
  tx = optax.adam(3e-2)
  opt_state = tx.init(params)

  @jax.jit
  def update(params, opt_state):
    loss = lambda p: -jnp.sum(objectives.decoder_log_likelihood(model, p, codes, batch, None))
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(150):
    params, opt_state = update(params, opt_state)
  return vocab, model, params, codes


def test_greedy_decoding_reproduces_a_memorised_corpus():
  vocab, model, params, codes = _memorised_decoder()
  tokens = sampling.decode(model, params, codes, jax.random.key(0), max_length=12)
  assert sampling.to_text(vocab, tokens) == CORPUS
  # Interpolation endpoints are the two codes, so they decode to the two sentences.
  line = sampling.interpolate(codes[0], codes[1], 7)
  text = sampling.to_text(vocab, sampling.decode(model, params, line, jax.random.key(0), 12))
  assert text[0] == CORPUS[0] and text[-1] == CORPUS[1]


def test_greedy_decoding_agrees_with_the_teacher_forced_decoder(tiny_decoder):
  model, params, _ = tiny_decoder
  z = jax.random.normal(jax.random.key(0), (5, 3))
  tokens = sampling.decode(model, params, z, jax.random.key(1), max_length=8)
  inputs = jnp.concatenate([jnp.full((5, 1), BOS_ID, jnp.int32), tokens[:, :-1]], axis=1)
  logits = model.apply({"params": params}, z, inputs, deterministic=True)
  logits = logits.at[:, :, jnp.array([PAD_ID, BOS_ID])].set(-jnp.inf)
  expected = np.asarray(jnp.argmax(logits, axis=-1))
  for row, seq in enumerate(np.asarray(tokens)):
    length = (list(seq).index(EOS_ID) + 1) if EOS_ID in seq else len(seq)
    np.testing.assert_array_equal(seq[:length], expected[row, :length])
    assert np.all(seq[length:] == PAD_ID)


def test_sampling_rules(tiny_decoder):
  model, params, _ = tiny_decoder
  z = jax.random.normal(jax.random.key(0), (64, 3))
  greedy = sampling.decode(model, params, z, jax.random.key(1), 10)
  top1 = sampling.decode(model, params, z, jax.random.key(2), 10, temperature=1.0, top_k=1)
  np.testing.assert_array_equal(top1, greedy)  # top-1 sampling is greedy
  samples = np.asarray(sampling.decode(model, params, z, jax.random.key(3), 10, temperature=1.5))
  assert not np.array_equal(samples, np.asarray(greedy))
  assert not np.any(samples == BOS_ID)
  for seq in samples:  # nothing but padding after </s>, no padding before it
    if EOS_ID in seq:
      end = list(seq).index(EOS_ID)
      assert np.all(seq[end + 1:] == PAD_ID) and not np.any(seq[:end] == PAD_ID)
  top3 = np.asarray(sampling.decode(model, params, z, jax.random.key(4), 1, temperature=1.0,
                                    top_k=3))[:, 0]
  variables = {"params": params}
  state = model.apply(variables, z, method="start")
  _, first_logits = model.apply(variables, state, z, jnp.full((64,), BOS_ID, jnp.int32),
                                method="step")
  first_logits = first_logits.at[:, jnp.array([PAD_ID, BOS_ID])].set(-jnp.inf)
  allowed = np.asarray(jax.lax.top_k(first_logits, 3)[1])
  assert all(tok in allowed[i] for i, tok in enumerate(top3))


def test_interpolation_is_the_segment():
  a, b = jnp.array([0.0, 1.0]), jnp.array([2.0, -1.0])
  line = sampling.interpolate(a, b, 5)
  np.testing.assert_allclose(line, [[0, 1], [0.5, 0.5], [1, 0], [1.5, -0.5], [2, -1]])


def test_min_length_holds_back_the_end_of_sentence(tiny_decoder):
  model, params, _ = tiny_decoder
  z = jax.random.normal(jax.random.key(0), (64, 3))
  free = np.asarray(sampling.decode(model, params, z, jax.random.key(1), 10, temperature=1.5))
  held = np.asarray(sampling.decode(model, params, z, jax.random.key(1), 10, temperature=1.5,
                                    min_length=4))
  ends = lambda tokens: [list(row).index(EOS_ID) if EOS_ID in row else 10 for row in tokens]
  assert min(ends(free)) < 4  # the constraint has something to hold back here
  assert min(ends(held)) >= 4
  # Greedy: until </s> would first be chosen, the constrained decoding is the same.
  greedy = np.asarray(sampling.decode(model, params, z, jax.random.key(1), 10))
  greedy_held = np.asarray(sampling.decode(model, params, z, jax.random.key(1), 10,
                                           min_length=2))
  for row, end in enumerate(ends(greedy)):
    if end >= 2:
      np.testing.assert_array_equal(greedy_held[row], greedy[row])
