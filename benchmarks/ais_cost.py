"""Cost of the AIS estimate of -log p(x) (docs/method.md §9), at the study's sizes and PTB's.

    python benchmarks/ais_cost.py [--length=22] [--batch_size=8] [--chains=4] [--steps=50]
        [--sizes=study,ptb]

Times one jitted AIS call (`srlm.ais.make_nll_step`, the step `--config.eval.estimator=ais`
runs) on a batch of random sentences of T tokens (counting <s> and </s>) under a freshly
initialised decoder, median after compile, at two sizes: "study" (E = H = 128, D = 16,
launch/study.sh --scale=small) and "ptb" (E = H = 256, D = 32, launch/ptb.flags); V = 10,002
(--sizes: common.MODEL_SIZES).
AIS costs the same per step whatever N, so a short N is timed and the cost reported as seconds
per sentence per 1,000 AIS steps with C chains and L leapfrog steps (one decoder gradient per
leapfrog step), with the peak memory; writes benchmarks/results/ais_cost_<backend>.json.
"""

import os
import sys

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

from srlm import ais  # pylint: disable=wrong-import-position
from srlm import methods  # pylint: disable=wrong-import-position

_LENGTH = flags.DEFINE_integer("length", 22, "Padded length T incl. <s> and </s>.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Sentences per call (eval.batch_size).")
_CHAINS = flags.DEFINE_integer("chains", 4, "AIS chains per sentence (C).")
_LEAPFROG = flags.DEFINE_integer("leapfrog", 1, "Leapfrog steps per transition (L).")
_STEPS = flags.DEFINE_integer("steps", 50, "AIS steps N of the timed call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls (median reported).")
_SIZES = flags.DEFINE_list("sizes", ["study", "ptb"],
                           "Model sizes (common.MODEL_SIZES; tiny: a rehearsal's).")


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  rows, vocabs = [], {}
  for size in _SIZES.value:
    config, vocab = common.sized_config(size)
    vocabs[size] = vocab
    fields = {k: v for k, v in common.MODEL_SIZES[size].items() if k != "vocab_size"}
    ids = rng.integers(4, vocab, (_BATCH_SIZE.value, _LENGTH.value)).astype(np.int32)
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:],
             "mask": np.ones((_BATCH_SIZE.value, _LENGTH.value - 1), np.float32)}
    method = methods.get(config, vocab)
    params = method.init_params(jax.random.key(0))
    step = jax.jit(ais.make_nll_step(method.latent.log_likelihood, method.latent_dim,
                                     _STEPS.value, _CHAINS.value, _LEAPFROG.value, 0.05))
    timing = common.time_calls(lambda: step(params, batch, jax.random.key(1)), _REPEATS.value)
    per_1000 = timing["median_s"] / _BATCH_SIZE.value * 1000 / _STEPS.value
    row = {"size": size, **fields, "T": _LENGTH.value, "batch_size": _BATCH_SIZE.value,
           "chains": _CHAINS.value, "leapfrog": _LEAPFROG.value, "steps": _STEPS.value,
           **timing, "s_per_sentence_per_1000_steps": per_1000, **common.peak_memory_mb()}
    rows.append(row)
    print(f"{size} (E=H={fields['hidden_dim']}, D={fields['latent_dim']}) T={_LENGTH.value} "
          f"B={_BATCH_SIZE.value} C={_CHAINS.value} L={_LEAPFROG.value}: {per_1000:.2f} s per "
          f"sentence per 1,000 AIS steps ({timing['median_s']:.2f} s per call of N="
          f"{_STEPS.value}, compile+first {timing['compile_and_first_call_s']:.1f} s), peak "
          f"RSS {row['peak_host_rss_mb']:.0f} MB", flush=True)
  path = common.write_result("ais_cost", {"vocab_size": vocabs, "rows": rows})
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
