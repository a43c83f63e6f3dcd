"""Does unrolling the LSTM recurrence's lax.scan make a chain step cheaper?

The recurrence is a sequence of small (32 x 256) @ (256 x 1024) products, so its cost on a CPU
is partly the loop's own per-iteration work; unrolling trades that for a larger program. This
times what one short-run chain step asks of the recurrence at PTB sizes (B = 32, H = 256,
T = 22: 21 LSTM steps), its value and its gradient with respect to the input gates and h_0 (the
path from z), for each unroll factor, all compiled in one process and timed interleaved
(repeats rounds of 10 calls each), so that the factors share the same load.

    python benchmarks/lstm_unroll.py [--unrolls=1,2,3,4,7,21] [--repeats=7]

Writes benchmarks/results/lstm_unroll_<backend>.json and prints ms per call (median, spread).
"""

import os
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

from srlm import models  # pylint: disable=wrong-import-position

_UNROLLS = flags.DEFINE_list("unrolls", ["1", "2", "3", "4", "7", "21"], "scan unroll factors.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Interleaved rounds of 10 calls (median reported).")
_LENGTH = flags.DEFINE_integer("length", 22, "Padded length T (T - 1 LSTM steps).")


def _value_and_grad(w_h_Hx4H, keep_LxB, unroll: int):
  """jit(value_and_grad) of sum h_t^2 over models.lstm_recurrence with this unroll factor."""
  def recurrence(gates_LxBx4H, h0_BxH):
    h_LxBxH, _ = models.lstm_recurrence(gates_LxBx4H, w_h_Hx4H, h0_BxH, keep_LxB,
                                        unroll=unroll)
    return jnp.sum(h_LxBxH ** 2)
  return jax.jit(jax.value_and_grad(recurrence, argnums=(0, 1)))


def main(argv):
  del argv
  steps, batch_size, hidden = _LENGTH.value - 1, 32, 256
  rng = np.random.default_rng(0)
  gates = jnp.asarray(rng.standard_normal((steps, batch_size, 4 * hidden)), jnp.float32)
  w_h = jnp.asarray(rng.standard_normal((hidden, 4 * hidden)) * 0.05, jnp.float32)
  h0 = jnp.asarray(rng.standard_normal((batch_size, hidden)), jnp.float32)
  keep = jnp.ones((steps, batch_size), bool)
  unrolls = [int(u) for u in _UNROLLS.value]
  fns, compile_s = {}, {}
  for unroll in unrolls:
    fns[unroll] = _value_and_grad(w_h, keep, unroll)
    start = time.perf_counter()
    reference = jax.block_until_ready(fns[unroll](gates, h0))
    compile_s[unroll] = time.perf_counter() - start
    if unroll == unrolls[0]:
      first = reference
    # The same program, differently scheduled: the same numbers up to float32 rounding.
    np.testing.assert_allclose(reference[0], first[0], rtol=1e-5)
  times = {u: [] for u in unrolls}
  for _ in range(_REPEATS.value):
    for unroll, fn in fns.items():
      start = time.perf_counter()
      for _ in range(10):
        out = fn(gates, h0)
      jax.block_until_ready(out)
      times[unroll].append((time.perf_counter() - start) / 10 * 1000)
  rows = []
  base = statistics.median(times[unrolls[0]])
  for unroll in unrolls:
    median = statistics.median(times[unroll])
    rows.append({"unroll": unroll, "median_ms": median, "min_ms": min(times[unroll]),
                 "max_ms": max(times[unroll]), "ratio_to_first": median / base,
                 "compile_and_first_call_s": compile_s[unroll]})
    print(f"unroll {unroll:3d}: {median:6.2f} ms (min {min(times[unroll]):.2f}, max "
          f"{max(times[unroll]):.2f}), {median / base:.2f}x unroll {unrolls[0]}, compile "
          f"{compile_s[unroll]:.1f} s", flush=True)
  path = common.write_result("lstm_unroll", {
      "config": {"batch_size": batch_size, "hidden_dim": hidden, "lstm_steps": steps,
                 "repeats": _REPEATS.value, "calls_per_repeat": 10}, "rows": rows})
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
