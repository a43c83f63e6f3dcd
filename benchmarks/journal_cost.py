"""What journaling costs an evaluation: the AIS estimate of the tiny model (launch/ptb_tiny.flags,
trained --train_steps steps) on --sentences test sentences, with and without a journal
(srlm/journal.py: each finished batch appended, flushed and fsynced), alternated over
--repeats pairs after a warm-up of each (compilation excluded); medians and their ratio.

  python benchmarks/journal_cost.py --tfds_dir=~/tensorflow_datasets

Writes benchmarks/results/journal_cost_<backend>.json.
"""

import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

from srlm import cli  # pylint: disable=wrong-import-position
from srlm import evaluate  # pylint: disable=wrong-import-position
from srlm import runs  # pylint: disable=wrong-import-position
from srlm import runtime  # pylint: disable=wrong-import-position
from srlm import train  # pylint: disable=wrong-import-position
from srlm.journal import Journal, run_settings  # pylint: disable=wrong-import-position

_TFDS_DIR = flags.DEFINE_string("tfds_dir", "", "Prepared-data dir (default: TFDS's).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 20, "Training steps of the tiny model.")
_SENTENCES = flags.DEFINE_integer("sentences", 64, "Test sentences evaluated.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Sentences per batch (one journal line).")
_AIS_STEPS = flags.DEFINE_integer("ais_steps", 100, "AIS's N (a short batch: the worst case).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed pairs.")


def main(argv):
  del argv
  flags_in = ["--flagfile=launch/ptb_tiny.flags", f"--config.train.max_steps={_TRAIN_STEPS.value}",
              f"--config.eval.max_sentences={_SENTENCES.value}",
              f"--config.eval.batch_size={_BATCH_SIZE.value}", "--config.eval.estimator=ais",
              f"--config.eval.ais_steps={_AIS_STEPS.value}"]
  if _TFDS_DIR.value:
    flags_in.append(f"--config.data.dir={os.path.expanduser(_TFDS_DIR.value)}")
  config = cli.config_from_flags(flags_in)
  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(config, workdir)
    with runtime.evaluation_precision(config):
      run = runs.restore_trained(config, workdir)
      split = run.corpus.splits["test"]
      settings = run_settings(config, run.step, runtime.precision_in_force())

      record_seconds = []

      def once(journaled: bool) -> float:
        with tempfile.TemporaryDirectory() as journal_dir:
          journal = Journal(journal_dir, "eval_test_ais", settings) if journaled else None
          if journal is not None:  # the time inside record(): encoding, write, fsync
            record = journal.record

            def timed_record(*args):
              start = time.perf_counter()
              record(*args)
              record_seconds[-1] += time.perf_counter() - start
            journal.record = timed_record
            record_seconds.append(0.0)
          start = time.time()
          evaluate.evaluate_split(config, run.method, run.params, split,  # AIS, by config
                                  jax.random.key(0), run.mesh, journal)
          return time.time() - start

      once(False), once(True)  # the persistent cache's compilations
      times = {"plain": [], "journaled": []}
      record_seconds.clear()
      for _ in range(_REPEATS.value):
        times["plain"].append(once(False))
        times["journaled"].append(once(True))
  medians = {k: statistics.median(v) for k, v in times.items()}
  ratios = [j / p for p, j in zip(times["plain"], times["journaled"])]
  inside = [r / j for r, j in zip(record_seconds, times["journaled"])]
  result = {"sentences": _SENTENCES.value, "batch_size": _BATCH_SIZE.value,
            "ais_steps": _AIS_STEPS.value, "seconds": times, "median_s": medians,
            "record_seconds": record_seconds,
            "journaled_over_plain": {"median": statistics.median(ratios), "min": min(ratios),
                                     "max": max(ratios)},
            "record_share": {"median": statistics.median(inside), "max": max(inside)}}
  print(f"AIS eval of {_SENTENCES.value} sentences (N={_AIS_STEPS.value}, batches of "
        f"{_BATCH_SIZE.value}; each call traces and compiles, as a process does): plain "
        f"{medians['plain']:.2f} s, journaled {medians['journaled']:.2f} s (median); journaled / "
        f"plain per pair: median {statistics.median(ratios):.4f}, range {min(ratios):.4f}-"
        f"{max(ratios):.4f}; time inside the journal's writes: median "
        f"{100 * statistics.median(inside):.3f}% of the eval, max {100 * max(inside):.3f}%")
  print(f"wrote {common.write_result('journal_cost', result)}")


if __name__ == "__main__":
  app.run(main)
