"""What agreeing on a stop costs a multi-process run: steps per second of the tiny PTB config
in 2 CPU processes on localhost (gloo), with the stop agreed at every step against only at log
steps.

The two ways are two source trees run side by side in one invocation (so their ratio is
measured under the same machine load): `--tree=NAME=PATH` for each, e.g. the commit before
the change checked out in /tmp/before and this tree. For each tree, each of `--repeats` runs
trains `--steps` steps with `--log_every` steps per log window, and the figure is the median
of the steps/s that training logged for its windows after the first (compilation excluded).

  python benchmarks/stop_agreement.py --tree=every_step=/tmp/before --tree=log_steps=. \
      --tfds_dir=/tmp/tfds

Writes benchmarks/results/stop_agreement_cpu.json.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

_TREES = flags.DEFINE_multi_string("tree", [], "NAME=PATH of a source tree to time.")
_STEPS = flags.DEFINE_integer("steps", 60, "Training steps per run.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "Steps per log window.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs per tree.")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "", "Prepared-data dir (default: a fresh one).")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(tree: str, workdir: str, tfds_dir: str) -> list[float]:
  """One 2-process run from `tree`; the steps/s of its log windows after the first."""
  port = _free_port()
  command = [sys.executable, "-m", "srlm.main", "--flagfile=launch/ptb_tiny.flags",
             f"--workdir={workdir}", f"--config.data.dir={tfds_dir}",
             "--config.data.max_train_sentences=4096", "--config.data.max_eval_sentences=8",
             "--config.data.buckets=(24,)", f"--config.train.max_steps={_STEPS.value}",
             f"--config.train.log_every_steps={_LOG_EVERY.value}",
             "--config.train.checkpoint_every_steps=100000"]
  processes = []
  for i in range(2):
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree), "SRLM_DISTRIBUTED": "1",
           "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(i)}
    processes.append(subprocess.Popen(command, cwd=os.path.abspath(tree), env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True))
  for process in processes:
    _, err = process.communicate(timeout=1800)
    if process.returncode:
      raise SystemExit(f"{tree}: exit {process.returncode}\n{err[-3000:]}")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rates = [r["steps_per_sec"] for r in map(json.loads, f) if r["split"] == "train"]
  return rates[1:]


def main(argv):
  del argv
  trees = dict(t.split("=", 1) for t in _TREES.value)
  tfds_dir = _TFDS_DIR.value or tempfile.mkdtemp()
  results = {name: [] for name in trees}
  for repeat in range(_REPEATS.value):
    for name, tree in trees.items():  # interleaved: load changes hit both alike
      with tempfile.TemporaryDirectory() as workdir:
        rates = _run(tree, workdir, tfds_dir)
      results[name].append(statistics.median(rates))
      print(f"repeat {repeat + 1}: {name} {results[name][-1]:.2f} steps/s "
            f"(windows {', '.join(f'{r:.2f}' for r in rates)})", flush=True)
  summary = {name: {"median_steps_per_sec": statistics.median(r),
                    "ms_per_step": 1000 / statistics.median(r), "runs": r}
             for name, r in results.items()}
  for name, s in summary.items():
    print(f"{name}: {s['median_steps_per_sec']:.2f} steps/s, {s['ms_per_step']:.1f} ms/step "
          f"(runs {', '.join(f'{r:.2f}' for r in s['runs'])})")
  path = common.write_result("stop_agreement", {
      "processes": 2, "steps": _STEPS.value, "log_every_steps": _LOG_EVERY.value,
      "repeats": _REPEATS.value, "config": "launch/ptb_tiny.flags, one bucket of 24, 4,096 "
      "training sentences (32 per step), gloo on localhost", "trees": trees,
      "results": summary})
  print(f"written to {path}")


if __name__ == "__main__":
  app.run(main)
