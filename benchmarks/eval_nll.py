"""Cost of the importance-sampled NLL with the exact short-run log-det, at PTB sizes.

    python benchmarks/eval_nll.py [--length=22] [--batch_sizes=8] [--num_samples=1] [--size=ptb]

Times SRI's `Method.nll_step` (K=20 chain steps with a D x D Hessian each, D=32, E=H=256,
V=10,002) on a batch of random sentences of T tokens (counting <s> and </s>), median after
compile, and reports seconds per sentence-sample and the peak memory; writes
benchmarks/results/eval_nll_<backend>.json.
"""

import os
import sys

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

from srlm import methods  # pylint: disable=wrong-import-position

_LENGTH = flags.DEFINE_integer("length", 22, "Padded length T incl. <s> and </s>.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["8"], "Sentences per call to time.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Chains per sentence per call (M).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls (median reported).")
_MAX_SECONDS = flags.DEFINE_float(
    "max_seconds", 0.0, "Skip a batch size whose calls would take longer than this, judged "
    "by the last one's cost per sentence (0: never skip); fewer timed calls past it (min 3).")
_SIZE = flags.DEFINE_enum("size", "ptb", sorted(common.MODEL_SIZES),
                          "Model size (common.MODEL_SIZES; tiny: a rehearsal's).")


def main(argv):
  del argv
  config, vocab = common.sized_config(_SIZE.value)
  config.eval.num_samples = _NUM_SAMPLES.value
  method = methods.get(config, vocab)
  params = method.init_params(jax.random.key(0))
  step = jax.jit(method.nll_step)
  rng = np.random.default_rng(0)
  rows = []
  for batch_size in map(int, _BATCH_SIZES.value):
    ids = rng.integers(4, vocab, (batch_size, _LENGTH.value)).astype(np.int32)
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:],
             "mask": np.ones((batch_size, _LENGTH.value - 1), np.float32)}
    if rows and _MAX_SECONDS.value:
      expected_s = rows[-1]["s_per_sentence_sample"] * batch_size * _NUM_SAMPLES.value * 4
      if expected_s > _MAX_SECONDS.value:
        print(f"B={batch_size}: skipped, 4 calls would take about {expected_s:.0f} s "
              f"(--max_seconds={_MAX_SECONDS.value:g})", flush=True)
        continue
    timing = common.time_calls(lambda: step(params, batch, jax.random.key(1)), _REPEATS.value,
                               _MAX_SECONDS.value)
    per = timing["median_s"] / (batch_size * _NUM_SAMPLES.value)
    row = {"T": _LENGTH.value, "batch_size": batch_size, "num_samples": _NUM_SAMPLES.value,
           **timing, "s_per_sentence_sample": per, **common.peak_memory_mb()}
    rows.append(row)
    print(f"T={_LENGTH.value} B={batch_size} M={_NUM_SAMPLES.value}: {per:.3f} s per "
          f"sentence-sample ({timing['median_s']:.2f} s per call, compile+first "
          f"{timing['compile_and_first_call_s']:.1f} s), peak RSS "
          f"{row['peak_host_rss_mb']:.0f} MB", flush=True)
  path = common.write_result("eval_nll", {
      "config": {"num_steps": config.langevin.num_steps, "latent_dim": config.model.latent_dim,
                 "embed_dim": config.model.embed_dim, "hidden_dim": config.model.hidden_dim,
                 "vocab_size": vocab, "size": _SIZE.value,
                 "log_det": "exact, Hessians along the chain"},
      "rows": rows})
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
