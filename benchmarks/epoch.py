"""One real epoch of a training run (launch/ptb.flags by default), or as many of its steps as
--budget_s allows, split into compile, stepping and validation; the epoch and the whole run
projected from them; and the loop's stepping against the isolated step on the same bucket mix.

    python benchmarks/epoch.py                      # launch/ptb.flags, within 600 s
    python benchmarks/epoch.py --flags=--flagfile=launch/ptb_tiny.flags,--config.data.vocab_size=500

In one process:
  1. the isolated step: each bucket's jitted train step on a fixed batch of that bucket
     (common.isolated_step_seconds; its compile and the median of --repeats calls);
  2. training by train.train_and_evaluate in a fresh workdir for one epoch's steps, or the
     steps that fit the budget (estimated from 1, with room kept for 3), logged every
     --log_every steps. Its compile is what JAX reports compiling (jax.monitoring's trace,
     lowering and backend-compile durations) while it runs; stepping is the logged windows'
     time less the compiling inside them; the rest (corpus, state, the final checkpoint) is
     setup. Ratio = the same steps
     isolated / stepping (1.0: the loop adds nothing). Where nvidia-smi exists, the device's
     utilisation is sampled every 0.5 s while it trains;
  3. the epoch's validation (evaluate.reconstruction) on the valid split, or on its first
     sentences that fit what is left (then projected to the whole split by sentence count),
     its compile apart.
The projected epoch is the epoch's bucket mix at the loop's rate plus the validation; the run
is its epochs plus one compile of the loop and the validation. Writes
benchmarks/results/epoch_<backend>.json.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

from srlm import cli  # pylint: disable=wrong-import-position
from srlm import evaluate  # pylint: disable=wrong-import-position
from srlm import methods  # pylint: disable=wrong-import-position
from srlm import parallel  # pylint: disable=wrong-import-position
from srlm import runtime  # pylint: disable=wrong-import-position
from srlm import state as state_lib  # pylint: disable=wrong-import-position
from srlm import train  # pylint: disable=wrong-import-position
from srlm.data import pipeline  # pylint: disable=wrong-import-position

_FLAGS = flags.DEFINE_list("flags", ["--flagfile=launch/ptb.flags"],
                           "The run's flags (srlm.main's), comma-separated.")
_BUDGET = flags.DEFINE_integer("budget_s", 600, "Seconds for the whole measurement.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "--config.train.log_every_steps.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Isolated calls per bucket.")

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compiles: list[tuple[float, float]] = []  # (start time, seconds) of what JAX compiled


def _on_duration(event: str, duration_s: float, **kwargs) -> None:
  del kwargs
  if event in _COMPILE_EVENTS:
    _compiles.append((time.time() - duration_s, duration_s))


def _compile_seconds(lo: float, hi: float) -> float:
  """Seconds between times lo and hi in which JAX was compiling (the union of its events'
  intervals: a function traced inside another's trace counts once)."""
  total, reached = 0.0, lo
  for began, seconds in sorted(_compiles):
    begin, end = max(began, reached), min(began + seconds, hi)
    if end > begin:
      total += end - begin
      reached = end
  return total


class _Utilisation:
  """nvidia-smi's GPU utilisation and memory in use, sampled every 0.5 s (nothing without it)."""

  def __enter__(self):
    self.process = None
    if shutil.which("nvidia-smi"):
      self.process = subprocess.Popen(
          ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
           "--format=csv,noheader,nounits", "-lms", "500"],
          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return self

  def __exit__(self, *exc):
    self.samples = []
    if self.process is not None:
      self.process.terminate()
      out, _ = self.process.communicate(timeout=10)
      for line in out.splitlines():
        try:
          self.samples.append([float(v) for v in line.split(",")[:2]])
        except ValueError:
          pass

  def summary(self) -> dict:
    if not self.samples:
      return {}
    used = [s[0] for s in self.samples]
    return {"gpu_utilisation_percent_median": statistics.median(used),
            "gpu_utilisation_percent_mean": statistics.fmean(used),
            "gpu_memory_used_mb_max": max(s[1] for s in self.samples),
            "utilisation_samples": len(used)}


def main(argv):
  del argv
  deadline = time.time() + _BUDGET.value
  jax.monitoring.register_event_duration_secs_listener(_on_duration)
  config = cli.config_from_flags([*_FLAGS.value, "--config.train.checkpoint_every_steps=10000000",
                                  f"--config.train.log_every_steps={_LOG_EVERY.value}"])
  with runtime.matmul_precision(config.train.matmul_precision):
    corpus = pipeline.load_corpus(config.data)
    isolated = common.isolated_step_seconds(config, corpus, _REPEATS.value)
  step_s = {length: r["median_s"] for length, r in isolated.items()}
  train_split, valid_split = corpus.splits["train"], corpus.splits["valid"]
  plan = pipeline.epoch_plan(train_split, config.data, config.train.seed, 0)
  epoch_isolated_s = sum(step_s[length] for length in plan.lengths)
  mean_step_s = epoch_isolated_s / len(plan)
  loop_compile_estimate_s = sum(r["compile_and_first_call_s"] - r["median_s"]
                                for r in isolated.values())
  # Validation: about the chain of a step per batch (no parameter gradient); kept to at most
  # 30% of what is left.
  left_s = deadline - time.time() - 10
  valid_sentence_s = mean_step_s / config.data.batch_size
  valid_sentences = len(valid_split)
  if valid_sentences * valid_sentence_s + loop_compile_estimate_s / 2 > 0.3 * left_s:
    valid_sentences = max(config.eval.batch_size,
                          int((0.3 * left_s - loop_compile_estimate_s / 2) / valid_sentence_s))
    valid_sentences = min(valid_sentences, len(valid_split))
  train_budget_s = 0.7 * left_s - loop_compile_estimate_s - 10  # 10 s: corpus, state, saving
  steps = int(min(len(plan), max(train_budget_s / mean_step_s, 2 * _LOG_EVERY.value)))
  print("isolated step by bucket: " + ", ".join(
      f"T={k}: {v * 1e3:.2f} ms" for k, v in step_s.items())
        + f"; training {steps} of the epoch's {len(plan)} steps, validating on "
        f"{valid_sentences} of {len(valid_split)} sentences", flush=True)

  workdir = tempfile.mkdtemp(prefix="srlm-epoch-")
  config.train.max_steps = steps
  start = time.time()
  with _Utilisation() as utilisation:
    trained = train.train_and_evaluate(config, workdir)
  end = time.time()
  train_wall_s = end - start
  loop_start = end - trained["loop_seconds"]
  loop_compile_s = _compile_seconds(start, end)  # the state's and the steps' (some ahead)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    windows = [r for r in map(json.loads, f) if r["split"] == "train"]
  shutil.rmtree(workdir, ignore_errors=True)
  windows_s, previous = 0.0, 0
  for record in windows:
    windows_s += (record["step"] - previous) / record["steps_per_sec"]
    previous = record["step"]
  stepping_s = windows_s - _compile_seconds(loop_start, loop_start + windows_s)
  isolated_s = sum(step_s[length] for length in plan.lengths[:steps])
  ratio = isolated_s / stepping_s

  method = methods.get(config, len(corpus.vocab), len(plan))
  mesh = parallel.make_mesh(config.parallel.num_devices)
  state = state_lib.create_replicated_train_state(method, config.train, jax.random.key(0), mesh)
  start = time.time()
  with runtime.matmul_precision(config.train.matmul_precision):
    evaluate.reconstruction(config, method, state.params, valid_split.head(valid_sentences),
                            jax.random.key(2), mesh)
  valid_compile_s = _compile_seconds(start, time.time())
  valid_s = (time.time() - start - valid_compile_s) * len(valid_split) / valid_sentences

  epoch_s = epoch_isolated_s / ratio + valid_s
  epochs = config.train.num_epochs
  result = {
      "flags": _FLAGS.value, "budget_s": _BUDGET.value, "log_every": _LOG_EVERY.value,
      "isolated_step": {str(k): v for k, v in isolated.items()},
      "bucket_mix": {str(k): int(np.sum(np.asarray(plan.lengths) == k))
                     for k in config.data.buckets},
      "steps_per_epoch": len(plan), "measured_steps": steps,
      "train_wall_s": train_wall_s, "loop_compile_s": loop_compile_s,
      "stepping_s": stepping_s, "setup_s": train_wall_s - stepping_s - loop_compile_s,
      "isolated_s": isolated_s, "ratio_isolated_over_loop": ratio,
      "loop_steps_per_s": steps / stepping_s,
      "window_steps_per_s": [r["steps_per_sec"] for r in windows],
      **utilisation.summary(),
      "valid_sentences_measured": valid_sentences, "valid_sentences": len(valid_split),
      "valid_compile_s": valid_compile_s, "valid_s": valid_s,
      "projected_epoch_stepping_s": epoch_isolated_s / ratio, "projected_epoch_s": epoch_s,
      "num_epochs": epochs,
      "projected_run_s": loop_compile_s + valid_compile_s + epochs * epoch_s}
  print(f"{steps} steps: compile {loop_compile_s:.1f} s, stepping {stepping_s:.2f} s "
        f"({steps / stepping_s:.2f} steps/s), the same steps isolated {isolated_s:.2f} s: "
        f"ratio {ratio:.3f}; validation {valid_s:.1f} s (+ {valid_compile_s:.1f} s compile); "
        f"projected epoch {epoch_s:.0f} s, {epochs}-epoch run "
        f"{result['projected_run_s'] / 3600:.2f} h")
  print(f"wrote {common.write_result('epoch', result)}")


if __name__ == "__main__":
  app.run(main)
