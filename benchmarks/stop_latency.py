"""How fast training answers a cluster's SIGTERM, and whether its logged rate is the wall
clock's: `python -m srlm.main --flagfile=launch/ptb.flags` (all of PTB, the paper's sizes) on
this machine, SIGTERM once `--signal_after` steps are logged, `--repeats` times.

For each run: the seconds from SIGTERM to the process's exit (the checkpoint saved in between),
the exit code, the step it stopped at; and for each log record after the first two, the
steps/s training logged against the wall clock's (steps between two records over the seconds
between their appearance in metrics.jsonl, polled every 10 ms).

  python benchmarks/stop_latency.py --tfds_dir=~/tensorflow_datasets

Writes benchmarks/results/stop_latency_<backend>.json.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

_FLAGFILE = flags.DEFINE_string("flagfile_run", "launch/ptb.flags", "The run's flagfile.")
_SIGNAL_AFTER = flags.DEFINE_integer("signal_after", 30, "Steps logged before SIGTERM.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 5, "Steps per log record.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs.")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", "", "Prepared-data dir (default: TFDS's).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _records(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.endswith("\n") and '"train"' in line]


def _one_run(workdir: str) -> dict:
  command = [sys.executable, "-m", "srlm.main", f"--flagfile={_FLAGFILE.value}",
             f"--workdir={workdir}", f"--config.train.log_every_steps={_LOG_EVERY.value}",
             "--config.train.checkpoint_every_steps=100000", "--config.train.max_steps=100000"]
  if _TFDS_DIR.value:
    command.append(f"--config.data.dir={os.path.expanduser(_TFDS_DIR.value)}")
  metrics = os.path.join(workdir, "metrics.jsonl")
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  seen: dict[int, float] = {}  # step -> when its record appeared
  while True:
    for record in _records(metrics):
      seen.setdefault(record["step"], time.time())
    if seen and max(seen) >= _SIGNAL_AFTER.value:
      break
    if process.poll() is not None:
      raise SystemExit(f"the run ended before step {_SIGNAL_AFTER.value}:\n"
                       f"{process.stderr.read()[-3000:]}")
    time.sleep(0.01)
  sent = time.time()
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate()
  exited = time.time()
  records = {r["step"]: r for r in _records(metrics)}
  steps = sorted(seen)
  rates = []
  for before, after in zip(steps[1:], steps[2:]):  # the first window holds compilation
    wall = (after - before) / (seen[after] - seen[before])
    rates.append({"step": after, "logged": records[after]["steps_per_sec"], "wall": wall,
                  "ratio": records[after]["steps_per_sec"] / wall})
  stopped = [line for line in err.splitlines() if "preempted at step" in line]
  return {"exit_code": process.returncode, "sigterm_to_exit_s": exited - sent,
          "signalled_after_step": max(steps), "stop_line": stopped[-1] if stopped else "",
          "rates": rates}


def main(argv):
  del argv
  runs = []
  for i in range(_REPEATS.value):
    with tempfile.TemporaryDirectory() as workdir:
      runs.append(_one_run(workdir))
    r = runs[-1]
    print(f"run {i + 1}: exit {r['exit_code']}, SIGTERM to exit {r['sigterm_to_exit_s']:.2f} s "
          f"(signalled after step {r['signalled_after_step']}); logged/wall steps/s ratios "
          + " ".join(f"{x['ratio']:.3f}" for x in r["rates"]), flush=True)
  latencies = [r["sigterm_to_exit_s"] for r in runs]
  ratios = [x["ratio"] for r in runs for x in r["rates"]]
  result = {"flagfile": _FLAGFILE.value, "log_every_steps": _LOG_EVERY.value,
            "sigterm_to_exit_s": {"median": statistics.median(latencies),
                                  "min": min(latencies), "max": max(latencies)},
            "logged_over_wall_rate": {"median": statistics.median(ratios), "min": min(ratios),
                                      "max": max(ratios)},
            "runs": runs}
  print(f"SIGTERM to exit: median {result['sigterm_to_exit_s']['median']:.2f} s, max "
        f"{result['sigterm_to_exit_s']['max']:.2f} s; logged / wall-clock steps/s: median "
        f"{result['logged_over_wall_rate']['median']:.3f}, range {min(ratios):.3f}-"
        f"{max(ratios):.3f}")
  print(f"wrote {common.write_result('stop_latency', result)}")


if __name__ == "__main__":
  app.run(main)
