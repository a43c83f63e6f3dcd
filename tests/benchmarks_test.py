"""The benchmarks' own arithmetic: the matmul FLOP count and the dependent loop iterations behind
train_step.py's matmul and latency floors."""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from srlm import methods
from srlm import parallel
from srlm import state as state_lib
from srlm import train

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import common  # pylint: disable=wrong-import-position


def _tanh_chain(w, x):
  """10 dependent products (64 x 128) @ (128 x 128) in a scan."""
  def body(c, _):
    return jnp.tanh(c @ w), None
  c, _ = jax.lax.scan(body, x, None, length=10)
  return c.sum()


def test_matmul_flops_counts_loop_bodies_times_their_length_and_skips_unused_products():
  w, x = jnp.ones((128, 128)), jnp.ones((64, 128))
  product = 2 * 64 * 128 * 128
  assert common.matmul_flops(common.traced(_tanh_chain, w, x)) == 10 * product
  # Backward: the gradient back through c and the weight gradient, each step.
  assert common.matmul_flops(common.traced(jax.grad(_tanh_chain), w, x)) == 30 * product
  # With respect to x only, inside jit: the weight gradients are dead code.
  grad_x = jax.jit(jax.grad(_tanh_chain, argnums=1))
  assert common.matmul_flops(common.traced(grad_x, w, x)) == 20 * product
  # A cond counts its costliest branch.
  pick = lambda p, w, x: jax.lax.cond(p, lambda: (x @ w).sum(), lambda: x.sum())
  assert common.matmul_flops(common.traced(pick, True, w, x)) == product


def test_the_lm_train_step_performs_the_products_of_an_lstm_forward_and_backward(tiny_config):
  """Every product of one LM step, counted by hand: forward, the gradient back through each
  layer and each weight gradient, for input gates (E x 4H), recurrence (H x 4H) and output
  layer (H x V), over B (T - 1) positions; plus the output bias's gradient (a vector-matrix
  product, 2 B (T - 1) V)."""
  config = tiny_config
  config.model.kind = "lm"
  vocab, length, batch_size = 50, 12, config.data.batch_size
  method = methods.get(config, vocab, steps_per_epoch=10)
  mesh = parallel.make_mesh(1)
  state = state_lib.create_replicated_train_state(method, config.train, jax.random.key(0), mesh)
  sentences = list(np.random.default_rng(0).integers(4, vocab, (batch_size, length))
                   .astype(np.int32))
  batch = {**parallel.global_batch(sentences, length, batch_size, mesh), "epoch": np.int32(0)}
  step = train.make_train_step(method, mesh)
  jaxpr = common.traced(step, state, batch, jax.random.key(1))
  flops = common.matmul_flops(jaxpr)
  n, e, h = batch_size * (length - 1), config.model.embed_dim, config.model.hidden_dim
  assert flops == 3 * 2 * n * (e * 4 * h + h * 4 * h + h * vocab) + 2 * n * vocab
  # One cell step per predicted position forward, and one back (its latency floor).
  assert common.scan_iterations(jaxpr) == 2 * (length - 1)


def test_scan_iterations_counts_dependent_loop_steps_forward_and_backward():
  w, x = jnp.ones((128, 128)), jnp.ones((64, 128))
  assert common.scan_iterations(common.traced(_tanh_chain, w, x)) == 10
  # The gradient runs the forward scan, then the reverse one.
  assert common.scan_iterations(common.traced(jax.grad(_tanh_chain), w, x)) == 20

  def chain_of_chains(w, x):  # 3 outer steps, each running the 10-step scan and its reverse
    def body(c, _):
      return c + jax.grad(_tanh_chain, argnums=1)(w, c), None
    return jax.lax.scan(body, x, None, length=3)[0].sum()
  assert common.scan_iterations(common.traced(chain_of_chains, w, x)) == 3 * 20
  pick = lambda p, w, x: jax.lax.cond(p, lambda: _tanh_chain(w, x), lambda: x.sum())
  assert common.scan_iterations(common.traced(pick, True, w, x)) == 10


def test_time_calls_stops_at_max_seconds_after_three_calls_and_says_how_many():
  import time  # pylint: disable=import-outside-toplevel
  timing = common.time_calls(lambda: time.sleep(0.05), repeats=50, max_seconds=0.01)
  assert timing["repeats"] == 3  # at least 3, then the budget (long spent) stops it
  assert common.time_calls(lambda: None, repeats=5)["repeats"] == 5
