"""What bf16 matmuls do to the metrics: the same run trained and evaluated in float32 and in
bfloat16 (config.model.compute_dtype), same seed, batches and keys.

    python benchmarks/mixed_precision.py [--flagfile_run=launch/ptb_tiny.flags] [--steps=200]

Trains each for --steps steps in a temporary workdir, evaluates --eval_sentences test
sentences (log-det NLL with M=--num_samples chains, KL, REC, MI, AU), and prints and writes
benchmarks/results/mixed_precision_<backend>.json with both rows and their differences.
The speed of bf16 is timed by train_step.py --compute_dtype=bfloat16.
"""

import os
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

from srlm import cli
from srlm import config as config_lib  # pylint: disable=wrong-import-position
from srlm import evaluate  # pylint: disable=wrong-import-position
from srlm import train  # pylint: disable=wrong-import-position

_FLAGFILE = flags.DEFINE_string("flagfile_run", "launch/ptb_tiny.flags", "The run's flagfile.")
_STEPS = flags.DEFINE_integer("steps", 200, "Training steps per precision.")
_EVAL_SENTENCES = flags.DEFINE_integer("eval_sentences", 64, "Test sentences evaluated.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 10, "M, chains per sentence.")

_METRICS = ("nll", "ppl", "kl", "rec", "mi", "au")


def main(argv):
  del argv
  rows = {}
  for dtype in config_lib.COMPUTE_DTYPES:
    config = cli.config_from_flags([
        f"--flagfile={_FLAGFILE.value}", f"--config.model.compute_dtype={dtype}",
        f"--config.train.max_steps={_STEPS.value}", "--config.train.num_epochs=1000",
        "--config.train.checkpoint_every_steps=1000000",
        f"--config.eval.max_sentences={_EVAL_SENTENCES.value}",
        f"--config.eval.num_samples={_NUM_SAMPLES.value}"])
    with tempfile.TemporaryDirectory() as workdir:
      start = time.time()
      train.train_and_evaluate(config, workdir)
      train_s = time.time() - start
      result = evaluate.evaluate_workdir(config, workdir)
    rows[dtype] = {"train_seconds": train_s, **{k: result[k] for k in _METRICS}}
    print(f"{dtype:9s}: " + "  ".join(f"{k} {rows[dtype][k]:.3f}" for k in _METRICS) +
          f"  (trained in {train_s:.0f} s)", flush=True)
  differences = {k: rows["bfloat16"][k] - rows["float32"][k] for k in _METRICS}
  print("bf16 - f32: " + "  ".join(f"{k} {v:+.3f}" for k, v in differences.items()))
  path = common.write_result("mixed_precision", {
      "flagfile": _FLAGFILE.value, "steps": _STEPS.value,
      "eval_sentences": _EVAL_SENTENCES.value, "num_samples": _NUM_SAMPLES.value,
      "rows": rows, "bfloat16_minus_float32": differences})
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
