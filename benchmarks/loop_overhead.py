"""How close the training loop steps to the isolated step: a model small enough that a step
takes milliseconds (so the loop's own costs show, as on a GPU where the SRI step is 17 ms),
trained for --epochs epochs by train.train_and_evaluate; its stepping time in the last epoch
(every window but the first, which holds the validation and checkpoint before it) against the
same steps timed in isolation (each bucket's jitted step on a fixed batch, median of
--repeats), in one process. Ratio = isolated / loop (1.0: the loop adds nothing). Writes
benchmarks/results/loop_overhead_<backend>.json.

    python benchmarks/loop_overhead.py
"""

import json
import os
import statistics
import sys
import tempfile

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

from srlm import cli  # pylint: disable=wrong-import-position
from srlm import methods  # pylint: disable=wrong-import-position
from srlm import runtime  # pylint: disable=wrong-import-position
from srlm import state as state_lib  # pylint: disable=wrong-import-position
from srlm import train  # pylint: disable=wrong-import-position
from srlm.data import pipeline  # pylint: disable=wrong-import-position

_FLAGS = flags.DEFINE_list(
    "flags", ["--flagfile=launch/ptb_tiny.flags", "--config.model.embed_dim=32",
              "--config.model.hidden_dim=32", "--config.data.vocab_size=500",
              "--config.data.max_train_sentences=3200",
              "--config.data.buckets=(12,22,32)", "--config.data.max_eval_sentences=64"],
    "The run's flags (srlm.main's); the default's SRI step takes a few ms on a 2-core CPU.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs; the last one is measured.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 25, "--config.train.log_every_steps.")
_REPEATS = flags.DEFINE_integer("repeats", 30, "Isolated calls per bucket.")


def isolated_step_seconds(config, corpus) -> dict[int, float]:
  """Each bucket's jitted train step on a fixed batch of that bucket: the median seconds."""
  method = methods.get(config, len(corpus.vocab))
  state = state_lib.create_train_state(method, config.train, jax.random.key(0))
  step = train.make_train_step(method, donate=False)
  split = corpus.splits["train"]
  seconds = {}
  for length in config.data.buckets:
    sentences = [s for s in split.sentences if len(s) + 2 <= length][:config.data.batch_size]
    batch = {**pipeline.make_batch(sentences, length, config.data.batch_size),
             "epoch": np.int32(0)}
    timing = common.time_calls(lambda: step(state, batch, jax.random.key(1)), _REPEATS.value)
    seconds[length] = timing["median_s"]
  return seconds


def main(argv):
  del argv
  workdir = tempfile.mkdtemp(prefix="srlm-loop-")
  config = cli.config_from_flags([*_FLAGS.value, f"--config.train.num_epochs={_EPOCHS.value}",
                                  f"--config.train.log_every_steps={_LOG_EVERY.value}",
                                  "--config.train.checkpoint_every_steps=100000"])
  with runtime.matmul_precision(config.train.matmul_precision):
    corpus = pipeline.load_corpus(config.data)
    isolated = isolated_step_seconds(config, corpus)
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [r for r in map(json.loads, f) if r["split"] == "train"]
  last = [r for r in records if r["epoch"] == _EPOCHS.value]
  # Windows of the last epoch, the first left out (the validation and checkpoint before it).
  split = corpus.splits["train"]
  plan = pipeline.epoch_plan(split, config.data, config.train.seed, _EPOCHS.value - 1)
  steps_per_epoch = len(plan)
  first_step = steps_per_epoch * (_EPOCHS.value - 1)
  loop_s = isolated_s = 0.0
  steps = 0
  previous = last[0]["step"]
  for record in last[1:]:
    n = record["step"] - previous
    loop_s += n / record["steps_per_sec"]
    isolated_s += sum(isolated[plan.lengths[i - first_step]]
                      for i in range(previous, record["step"]))
    steps += n
    previous = record["step"]
  ratio = isolated_s / loop_s
  result = {"flags": _FLAGS.value, "epochs": _EPOCHS.value, "log_every": _LOG_EVERY.value,
            "isolated_step_s": {str(k): v for k, v in isolated.items()},
            "bucket_mix": {str(k): int(np.sum(np.asarray(plan.lengths) == k))
                           for k in config.data.buckets},
            "measured_steps": steps, "loop_s": loop_s, "isolated_s": isolated_s,
            "ratio_isolated_over_loop": ratio,
            "loop_steps_per_s": steps / loop_s,
            "window_steps_per_s": [r["steps_per_sec"] for r in last[1:]],
            "window_median_steps_per_s": statistics.median(
                r["steps_per_sec"] for r in last[1:])}
  print(f"isolated step (median of {_REPEATS.value}) by bucket: "
        + ", ".join(f"T={k}: {v * 1e3:.2f} ms" for k, v in isolated.items()))
  print(f"last epoch, {steps} steps: loop {loop_s:.2f} s, the same steps isolated "
        f"{isolated_s:.2f} s: ratio {ratio:.3f} ({steps / loop_s:.1f} steps/s)")
  path = common.write_result("loop_overhead", result)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
