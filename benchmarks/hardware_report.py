"""One command for a new machine (a GPU or TPU node, or a CPU): what srlm computes correctly
there and how fast, as one results JSON and one Markdown table, inside a time budget.

    python benchmarks/hardware_report.py --budget_s=420        # on the node, PTB sizes
    python benchmarks/hardware_report.py --smoke               # every stage at its smallest

Stages, in this order, each a process of its own (so that one that fails or hangs costs only
its share, and no stage holds the accelerator's memory while another runs):
  environment   device, driver, versions of JAX/jaxlib/flax/optax, the matmul precision
  tests         the maths core, Langevin, models, AIS and the golden and restart steps, at
                'highest' and at the backend's default precision; each failure with its message
  floors        the best matrix-product rate at the output layer's shape, float32 and bf16,
                and one dependent LSTM cell step's time (the latency floor's unit)
  step_*        the training step of every method at PTB sizes (SRI at T = 12/22/32, bf16,
                both gradients), with its matmul and latency floors and the ratio to each
                (train_step.py)
  depends_*     what the step's speed depends on: matmul precision HIGHEST against DEFAULT,
                the batch size (64, 128, 256: how much wider a step is for free), the LSTM
                scan's unroll factor (lstm_unroll.py)
  epoch         one real epoch of launch/ptb.flags, or the steps that fit its limit, split into
                compile, stepping and validation, the epoch and the 60-epoch run projected,
                the loop's stepping against the isolated step, GPU utilisation (epoch.py)
  eval_*        the log-det NLL's and AIS's cost per sentence at batch sizes that fill a device
Each stage runs under its own time limit, cut to what is left of --budget_s (less a reserve
to write the report); a stage that no longer fits is skipped and says so. Every stage's log
and results files go to OUT/<stage>/ (OUT: --out, else $SRLM_RESULTS_DIR, else
benchmarks/results/hardware_report/); the report is OUT/hardware_report_<backend>.json and
the table is printed; the exit code is 1 if a stage failed or hit its own limit (not if the
budget cut or skipped it). --smoke runs each stage at its smallest (a rehearsal: a tiny model,
two stages at a time, one compilation cache shared by the stages; under 2 minutes on a 2-core
CPU; its figures are not measurements), as CI does.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from typing import Any, NamedTuple

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position

_BUDGET = flags.DEFINE_integer("budget_s", 1800, "Seconds for the whole report.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Every stage at its smallest (a rehearsal).")
_OUT = flags.DEFINE_string("out", "", "Where the stages' files and the report go.")
_ONLY = flags.DEFINE_list("only", [], "Only the stages named here (e.g. step_sri_learned,epoch).")
_STAGE = flags.DEFINE_enum("stage", "", ["", "environment", "floors"],
                           "(internal) run one in-process stage and print its JSON.")

_RESERVE_S = 10  # kept back from the budget to write the report
_MIN_STAGE_S = 15  # a stage with less than this left is skipped
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NUMERICAL_TESTS = ["tests/objectives_test.py", "tests/langevin_test.py",
                    "tests/models_test.py", "tests/ais_test.py",
                    "tests/train_test.py::test_golden_first_step",
                    "tests/train_test.py::test_two_plus_two_steps_with_restart_equal_four"]


# epoch.py's run in a rehearsal: a tiny model on 320 sentences (its --flags is a
# comma-separated list, so no flag here may hold a comma).
_SMOKE_EPOCH = ["--flagfile=launch/ptb_tiny.flags", "--config.model.embed_dim=32",
                "--config.model.hidden_dim=32", "--config.data.vocab_size=500",
                "--config.data.buckets=22",
                "--config.data.max_train_sentences=320", "--config.data.max_eval_sentences=32"]


class Stage(NamedTuple):
  name: str
  limit_s: int  # its own time limit (full run; a smoke run's stages take what they need)
  command: list[str]  # arguments after `python`; "{budget_s}" in one: its time limit less 15 s
  env: dict[str, str] = {}


def _stages(smoke: bool) -> list[Stage]:
  me, py = "benchmarks/hardware_report.py", "benchmarks/"
  # A smoke run's steps: a tiny model (E = H = 32, V = 500) on 8 sentences.
  step = lambda *a: [py + "train_step.py", *(("--repeats=1", "--batch_size=8", "--size=tiny")
                                             if smoke else ("--repeats=10", "--max_seconds=20")),
                    *a]
  t22 = "--lengths=" + ("12" if smoke else "22")
  tests = ["-m", "pytest", "-q", "-n0", "-p", "no:cacheprovider", "-rf",
           *(["tests/objectives_test.py", "-k", "fused_log_likelihood_matches"] if smoke
             else _NUMERICAL_TESTS)]
  stages = [
      Stage("environment", 60, [me, "--stage=environment"]),
      Stage("tests_highest", 300, tests, {"SRLM_TEST_MATMUL_PRECISION": "highest"}),
      Stage("tests_default", 300, tests, {"SRLM_TEST_MATMUL_PRECISION": "default"}),
      Stage("floors", 60, [me, "--stage=floors"]),
      Stage("step_sri", 120, step("--lengths=" + ("12" if smoke else "12,22,32"))),
      Stage("step_sri_bf16", 60, step(t22, "--compute_dtype=bfloat16")),
      Stage("step_sri_accumulated", 60, step(t22, "--gradient=accumulated")),
  ]
  # (sri_learned times two steps per T, one with the step-size update: 23 s each on a CPU.)
  for kind in ("lm", "vae") if smoke else ("lm", "vae", "savae", "sri_learned"):
    stages.append(Stage(f"step_{kind}", 300 if kind == "sri_learned" else 120,
                        step(t22, f"--kind={kind}")))
  stages += [
      Stage("depends_highest", 60, step(t22, "--matmul_precision=highest")),
      *(Stage(f"depends_batch{b}", 120, step(t22, f"--batch_size={b}"))
        for b in ((16,) if smoke else (64, 128, 256))),
      Stage("depends_unroll", 120, [py + "lstm_unroll.py"] + (
          ["--unrolls=1,2", "--repeats=1", "--length=12"] if smoke else [])),
      Stage("epoch", 420, [py + "epoch.py", "--budget_s={budget_s}"] + (
          ["--log_every=5", "--repeats=2", "--flags=" + ",".join(_SMOKE_EPOCH)]
          if smoke else ["--repeats=3"])),
      Stage("eval_logdet", 180, [py + "eval_nll.py"] + (
          ["--length=12", "--batch_sizes=1", "--repeats=1", "--size=tiny"] if smoke
          else ["--batch_sizes=8,32,128", "--max_seconds=50"])),
      Stage("eval_ais", 180, [py + "ais_cost.py"] + (
          ["--length=12", "--batch_size=1", "--steps=5", "--repeats=1", "--sizes=tiny"] if smoke
          else ["--batch_size=32"])),
  ]
  return stages


def _environment() -> dict[str, Any]:
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from srlm import runtime  # pylint: disable=import-outside-toplevel
  versions = {}
  for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  driver = None
  try:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                             "--format=csv,noheader"], capture_output=True, text=True,
                            timeout=30, check=False).stdout.strip() or None
  except (OSError, subprocess.TimeoutExpired):
    pass
  return {**common.hardware(), "devices": [str(d) for d in jax.devices()],
          "driver": driver, "versions": versions,
          "matmul_precision_in_force": runtime.precision_in_force()}


def _floors() -> dict[str, Any]:
  # The output layer's product at PTB's T = 22: (32 x 21 rows) x 256 @ 256 x 10,002; and one
  # dependent LSTM cell step at B = 32, H = 256.
  return {**{dtype: common.gemm_rate(32 * 21, 256, 10002, dtype)
             for dtype in ("float32", "bfloat16")},
          "lstm_cell": common.lstm_cell_seconds(32, 256)}


def _test_failures(junit_path: str) -> dict[str, Any]:
  """Counts and each failure's test and message from pytest's JUnit XML."""
  root = ElementTree.parse(junit_path).getroot()
  suite = root if root.tag == "testsuite" else root.find("testsuite")
  failures = []
  for case in suite.iter("testcase"):
    for problem in (*case.findall("failure"), *case.findall("error")):
      failures.append({"test": f"{case.get('classname')}::{case.get('name')}",
                       "message": (problem.get("message") or "").strip()[:2000]})
  return {"tests": int(suite.get("tests", 0)), "failed": len(failures),
          "skipped": int(suite.get("skipped", 0)), "failures": failures}


def _run_stage(stage: Stage, out: str, timeout_s: float, budget_bound: bool) -> dict[str, Any]:
  directory = os.path.join(out, stage.name)
  os.makedirs(directory, exist_ok=True)
  command = [sys.executable, *(a.replace("{budget_s}", str(max(int(timeout_s) - 15, 10)))
                               for a in stage.command)]
  junit = os.path.join(directory, "tests.xml")
  if stage.name.startswith("tests"):
    command.append(f"--junitxml={junit}")
  env = {**os.environ, "SRLM_RESULTS_DIR": directory, **stage.env}
  if _SMOKE.value:  # what one stage compiled, the next reads back (a rehearsal's shortcut)
    env.update(JAX_COMPILATION_CACHE_DIR=os.path.join(out, "xla_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  start = time.time()
  with open(os.path.join(directory, "log.txt"), "w") as log:
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    try:
      process = subprocess.run(command, cwd=_REPO, env=env, stdout=subprocess.PIPE,
                               stderr=log, text=True, timeout=timeout_s, check=False)
      status = "ok" if process.returncode == 0 else f"exit {process.returncode}"
      stdout = process.stdout
    except subprocess.TimeoutExpired as e:
      status = (f"cut at the budget ({timeout_s:.0f} s)" if budget_bound
                else f"time limit ({timeout_s:.0f} s)")
      stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    log.write(stdout)
  record = {"stage": stage.name, "command": " ".join(stage.command), "status": status,
            "seconds": round(time.time() - start, 1)}
  if stage.name in ("environment", "floors") and status == "ok":
    record["result"] = json.loads(stdout.strip().splitlines()[-1])
  elif stage.name.startswith("tests") and os.path.exists(junit):
    record["result"] = _test_failures(junit)
    if record["result"]["failed"] and status.startswith("exit"):
      status = record["status"] = "failures"
  else:
    record["results"] = {name: common.read_json(os.path.join(directory, name))
                         for name in sorted(os.listdir(directory)) if name.endswith(".json")}
  return record


def _figures(record: dict[str, Any]) -> str:
  """The stage's figures in one table cell."""
  result = record.get("result")
  if record["stage"] == "environment" and result:
    return (f"{result['device_kind']} x{result['num_devices']} ({result['backend']}), "
            f"jax {result['versions']['jax']}, precision {result['matmul_precision_in_force']}"
            + (f", {result['driver']}" if result["driver"] else ""))
  if record["stage"] == "floors" and result:
    return ", ".join(f"{dtype} {result[dtype]['gemm_gflops']:.0f} GFLOP/s"
                     for dtype in ("float32", "bfloat16")) + (
        f", dependent LSTM cell step {result['lstm_cell']['lstm_cell_s'] * 1e6:.1f} us")
  if record["stage"].startswith("tests") and result:
    failed = "; ".join(f"{f['test']}: {f['message'][:120]}" for f in result["failures"])
    return f"{result['tests'] - result['failed']}/{result['tests']} passed" + (
        f"; failed: {failed}" if failed else "")
  cells = []
  for results in record.get("results", {}).values():
    for row in results.get("rows", []):
      what = " ".join(f"{k}={row[k]}" for k in ("size", "T", "batch_size", "unroll")
                      if k in row and not (k == "size" and row[k] == "study"))
      if "median_s" in row and "ratio_to_matmul_floor" in row:
        cells.append(f"{what}: {row['median_s']:.3f} s/step, "
                     f"{row['ratio_to_matmul_floor']:.2f}x matmul floor, "
                     f"{row['ratio_to_latency_floor']:.1f}x latency floor")
      elif "s_per_sentence_sample" in row:
        cells.append(f"{what}: {row['s_per_sentence_sample']:.3f} s/sentence-sample")
      elif "s_per_sentence_per_1000_steps" in row and row.get("size") != "study":
        cells.append(f"{what}: {row['s_per_sentence_per_1000_steps']:.2f} s/sentence/1000 "
                     "steps")
      elif "median_ms" in row:
        cells.append(f"{what}: {row['median_ms']:.2f} ms")
    if "projected_epoch_s" in results:
      r = results
      cells.append(
          f"{r['measured_steps']} of {r['steps_per_epoch']} steps: compile "
          f"{r['loop_compile_s']:.0f} s, {r['loop_steps_per_s']:.2f} steps/s (isolated step / "
          f"loop {r['ratio_isolated_over_loop']:.2f}), validation {r['valid_s']:.0f} s "
          f"(+ {r['valid_compile_s']:.0f} s compile); epoch {r['projected_epoch_s']:.0f} s, "
          f"{r['num_epochs']}-epoch run {r['projected_run_s'] / 3600:.2f} h"
          + (f"; GPU busy {r['gpu_utilisation_percent_median']:.0f}% (median)"
             if "gpu_utilisation_percent_median" in r else ""))
  return "; ".join(cells)


def _table(records: list[dict[str, Any]]) -> str:
  lines = ["| stage | status | seconds | figures |", "|---|---|---|---|"]
  for r in records:
    lines.append(f"| {r['stage']} | {r['status']} | {r['seconds']} | "
                 f"{_figures(r).replace('|', '/')} |")
  return "\n".join(lines)


def main(argv):
  del argv
  if _STAGE.value:
    print(json.dumps(_environment() if _STAGE.value == "environment" else _floors()))
    return
  out = _OUT.value or os.environ.get("SRLM_RESULTS_DIR") or os.path.join(
      common.RESULTS_DIR, "hardware_report")
  out = os.path.abspath(out)
  deadline = time.time() + _BUDGET.value - _RESERVE_S

  def run(stage: Stage) -> dict[str, Any]:
    left = deadline - time.time()
    if left < _MIN_STAGE_S:
      return {"stage": stage.name, "command": " ".join(stage.command),
              "status": "skipped (budget)", "seconds": 0}
    own_limit = not _SMOKE.value and stage.limit_s < left
    record = _run_stage(stage, out, stage.limit_s if own_limit else left, not own_limit)
    print(f"hardware_report: {stage.name} {record['status']} in {record['seconds']} s",
          flush=True)
    return record

  # A rehearsal's figures are not measurements: it runs two stages at a time (most of a tiny
  # stage is starting Python and compiling, one core each). A real report runs one at a time.
  stages = _stages(_SMOKE.value)
  unknown = sorted(set(_ONLY.value) - {s.name for s in stages})
  if unknown:
    raise SystemExit(f"hardware_report: --only names no stage {unknown}; the stages: "
                     f"{', '.join(s.name for s in stages)}")
  stages = [s for s in stages if not _ONLY.value or s.name in _ONLY.value]
  with concurrent.futures.ThreadPoolExecutor(2 if _SMOKE.value else 1) as pool:
    records = list(pool.map(run, stages))
  table = _table(records)
  path = common.write_result("hardware_report", {
      "smoke": _SMOKE.value, "budget_s": _BUDGET.value, "stages": records, "table": table}, out)
  print(table)
  print(f"wrote {path}")
  failed = [r["stage"] for r in records
            if r["status"] != "ok" and not r["status"].startswith(("skipped", "cut"))]
  if failed:  # after the report is written: what the other stages measured is kept
    raise SystemExit(f"hardware_report: {len(failed)} stage(s) did not finish cleanly: "
                     f"{', '.join(failed)} (logs in {out}/<stage>/log.txt)")


if __name__ == "__main__":
  app.run(main)
