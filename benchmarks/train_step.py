"""Time one training step at PTB sizes: B=32, K=20, E=H=256, D=32, V=10,002.

    python benchmarks/train_step.py [--kind=sri] [--lengths=22,12,32] [--gradient=final]

--kind=lm|vae times the baselines' steps (the VAE with both encoder and decoder updated).
T counts <s> and </s> (a batch predicts T-1 tokens). Prints, per T, the compile time and the
median seconds per step after compile, steps/s and sentences/s, and the peak memory; writes
benchmarks/results/train_step_<backend>.json. Random token ids: the cost does not depend on
the words.
"""

import os
import sys

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

from srlm import config as config_lib  # pylint: disable=wrong-import-position
from srlm import train  # pylint: disable=wrong-import-position
from srlm.models import make_decoder, make_encoder  # pylint: disable=wrong-import-position

_LENGTHS = flags.DEFINE_list("lengths", ["22", "12", "32"], "Padded lengths T to time.")
_KIND = flags.DEFINE_enum("kind", "sri", config_lib.KINDS, "Model kind.")
_GRADIENT = flags.DEFINE_enum("gradient", "final", config_lib.GRADIENTS,
                              "SRI's decoder gradient.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed steps per length (median reported).")
_VOCAB = 10002


def main(argv):
  del argv
  config = config_lib.Config()
  config.train.gradient = _GRADIENT.value
  config.model.kind = _KIND.value
  model = make_decoder(config.model, _VOCAB)
  encoder = make_encoder(config.model, _VOCAB)
  state = train.create_train_state(config, model, jax.random.key(0), encoder)
  step = train.make_train_step(config, model, encoder, steps_per_epoch=1315)
  rng = np.random.default_rng(0)
  batch_size = config.data.batch_size
  rows = []
  for length in map(int, _LENGTHS.value):
    ids = rng.integers(4, _VOCAB, (batch_size, length)).astype(np.int32)
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:],
             "mask": np.ones((batch_size, length - 1), np.float32), "epoch": np.int32(0)}
    timing = common.time_calls(lambda: step(state, batch, jax.random.key(1)), _REPEATS.value)
    row = {"T": length, **timing, "steps_per_s": 1 / timing["median_s"],
           "sentences_per_s": batch_size / timing["median_s"], **common.peak_memory_mb()}
    rows.append(row)
    print(f"T={length:3d}: {row['median_s']:.3f} s/step (min {row['min_s']:.3f}), "
          f"{row['steps_per_s']:.2f} steps/s, {row['sentences_per_s']:.1f} sentences/s, "
          f"compile+first {row['compile_and_first_call_s']:.1f} s, "
          f"peak RSS {row['peak_host_rss_mb']:.0f} MB", flush=True)
  name = "train_step_" + _KIND.value + (f"_{_GRADIENT.value}" if _KIND.value == "sri" else "")
  path = common.write_result(name, {
      "config": {"batch_size": batch_size, "num_steps": config.langevin.num_steps,
                 "embed_dim": config.model.embed_dim, "hidden_dim": config.model.hidden_dim,
                 "latent_dim": config.model.latent_dim, "vocab_size": _VOCAB,
                 "kind": _KIND.value, "gradient": _GRADIENT.value},
      "rows": rows})
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
