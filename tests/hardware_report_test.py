"""benchmarks/hardware_report.py where its user meets it: the command, its budget, its files.
(Every stage runs in CI's --smoke rehearsal; this checks the budget's bookkeeping.)"""

import json
import subprocess
import sys
import time

from helpers import REPO


def test_a_short_budget_cuts_or_skips_the_stages_it_cannot_hold_and_keeps_the_rest(tmp_path):
  start = time.time()
  process = subprocess.run(
      [sys.executable, "benchmarks/hardware_report.py", "--budget_s=27", f"--out={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  seconds = time.time() - start
  assert process.returncode == 0, process.stderr[-3000:]  # cut by the budget is no failure
  (path,) = tmp_path.glob("hardware_report_*.json")
  report = json.loads(path.read_text())
  statuses = {r["stage"]: r["status"] for r in report["stages"]}
  # The environment (a second or two) fits; the tests after it get what is left of the budget
  # less the report's reserve (and are cut there) or, if that is too little, nothing.
  assert statuses.pop("environment") == "ok"
  assert statuses.pop("tests_highest").startswith(("skipped (budget)", "cut at the budget"))
  assert set(statuses.values()) == {"skipped (budget)"} and "step_sri" in statuses
  assert seconds < 27 + 15  # the budget, and starting Python and JAX twice
  environment = report["stages"][0]["result"]
  assert environment["versions"]["jax"] and environment["matmul_precision_in_force"]
  assert "| environment | ok |" in process.stdout and "| step_sri | skipped (budget) |" in (
      process.stdout)


def test_only_runs_the_named_stages_and_refuses_a_name_it_does_not_know(tmp_path):
  unknown = subprocess.run(
      [sys.executable, "benchmarks/hardware_report.py", "--only=step_nothing",
       f"--out={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert unknown.returncode != 0 and "--only names no stage ['step_nothing']" in unknown.stderr
  assert "Traceback" not in unknown.stderr
  only = subprocess.run(
      [sys.executable, "benchmarks/hardware_report.py", "--only=environment",
       f"--out={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert only.returncode == 0, only.stderr[-3000:]
  (path,) = tmp_path.glob("hardware_report_*.json")
  assert [r["stage"] for r in json.loads(path.read_text())["stages"]] == ["environment"]
