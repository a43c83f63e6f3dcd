"""Long evaluations survive a stop: the command line stopped part-way (SIGTERM, kill -9) and run
again gives the uninterrupted result, reusing the journaled batches; other settings start
afresh; concurrent evaluations of one workdir never mix; SIGTERM in every long mode exits
128 + 15 with one line."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from srlm import journal

from helpers import REPO, copy_workdir, journaled_batches, run_cli_process

# The trained workdir's 8 test sentences in 4 batches of 2, each batch a second or more.
EVAL = ("--mode=eval", "--config.eval.batch_size=2")
ESTIMATORS = {"ais": ("--config.eval.estimator=ais", "--config.eval.ais_steps=300"),
              "is": ("--config.eval.estimator=is", "--config.eval.num_samples=20")}
RESULTS = {"ais": "eval_test_ais.json", "is": "eval_test.json"}
TIMINGS = ("nll_seconds", "seconds_per_sentence_per_1000_steps")


def _stop_part_way(flags, workdir: str, result: str, signum: int) -> tuple[int, str]:
  """Starts the command, sends signum once a batch is journaled; (exit code, stderr)."""
  process = subprocess.Popen([sys.executable, "-m", "srlm.main", *flags], cwd=REPO,
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  deadline = time.time() + 300
  while journaled_batches(workdir, result + ".") < 1:
    assert time.time() < deadline and process.poll() is None, process.stderr.read()[-3000:]
    time.sleep(0.02)
  process.send_signal(signum)
  _, err = process.communicate(timeout=60)
  return process.returncode, err


def _without_timings(result: dict) -> dict:
  return {k: v for k, v in result.items() if k not in TIMINGS}


@pytest.fixture(scope="module")
def uninterrupted(trained_workdir, tmp_path_factory):
  """uninterrupted(estimator) -> the result of an evaluation run without a stop (once each)."""
  done = {}

  def get(estimator: str) -> dict:
    if estimator not in done:
      workdir = copy_workdir(trained_workdir("sri"), tmp_path_factory.mktemp("uninterrupted"))
      result = run_cli_process(f"--workdir={workdir}", *EVAL, *ESTIMATORS[estimator])
      assert result.returncode == 0, result.stderr[-3000:]
      assert not os.listdir(os.path.join(workdir, journal.DIRECTORY))  # removed once written
      with open(os.path.join(workdir, RESULTS[estimator])) as f:
        done[estimator] = json.load(f)
    return done[estimator]

  return get


@pytest.mark.parametrize("estimator, signum", [("ais", signal.SIGTERM), ("is", signal.SIGTERM),
                                               ("ais", signal.SIGKILL)])
def test_a_stopped_eval_resumes_to_the_uninterrupted_result(trained_workdir, uninterrupted,
                                                            tmp_path, estimator, signum):
  expected = uninterrupted(estimator)
  workdir = copy_workdir(trained_workdir("sri"), tmp_path)
  flags = [f"--workdir={workdir}", *EVAL, *ESTIMATORS[estimator]]
  path = os.path.join(workdir, RESULTS[estimator])

  code, err = _stop_part_way(flags, workdir, RESULTS[estimator][:-len(".json")], signum)
  assert not os.path.exists(path)
  if signum == signal.SIGKILL:
    assert code == -signal.SIGKILL
    # Other settings do not reuse the journal and say which setting differs.
    changed = run_cli_process(*flags, "--config.eval.seed=1")
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "not reused; starting afresh" in changed.stderr
    assert "eval.seed: 0 -> 1" in changed.stderr and "reused from" not in changed.stderr
  else:
    assert code == 128 + signum, err[-3000:]
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("srlm:")] == [
        "srlm: --mode=eval stopped by SIGTERM: the finished batches are journaled in the "
        "workdir; run the same command again to resume."]

  resumed = run_cli_process(*flags)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "batches reused from" in resumed.stderr, resumed.stderr[-3000:]
  with open(path) as f:
    result = json.load(f)
  # Bit for bit (JSON floats round-trip): each batch's randomness is its own.
  assert _without_timings(result) == _without_timings(expected)


def test_concurrent_evals_of_one_workdir_leave_consistent_results(trained_workdir, tmp_path):
  """Two AIS evaluations with different N write one file name; an IS one another."""
  workdir = copy_workdir(trained_workdir("sri"), tmp_path)
  commands = [[*EVAL, *ESTIMATORS["ais"]], [*EVAL, *ESTIMATORS["ais"], "--config.eval.ais_steps=50"],
              [*EVAL, *ESTIMATORS["is"]]]
  processes = [subprocess.Popen([sys.executable, "-m", "srlm.main", f"--workdir={workdir}", *c],
                                cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                text=True) for c in commands]
  for process in processes:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
  with open(os.path.join(workdir, "eval_test_ais.json")) as f:
    ais = json.load(f)
  assert ais["ais_steps"] in (50, 300)
  assert ais["nll"] == pytest.approx(np.mean(ais["sentence_nll"]), rel=1e-9)
  with open(os.path.join(workdir, "eval_test.json")) as f:
    assert json.load(f)["num_samples"] == 20
  leftovers = [p for p in glob.glob(os.path.join(workdir, "**", "*"), recursive=True)
               if p.endswith(".tmp") or p.endswith(".jsonl") and journal.DIRECTORY in p]
  assert not leftovers


@pytest.mark.parametrize("mode, flags, result", [
    ("features", ("--config.analysis.batch_size=2", "--config.analysis.feature_chains=20"),
     "features_test"),
    ("bdmc", ("--config.eval.batch_size=2", "--config.eval.bdmc_sentences=8",
              "--config.eval.bdmc_steps=(300,)"), "bdmc")])
def test_sigterm_in_an_analysis_mode_exits_143_in_one_line(trained_workdir, tmp_path, mode,
                                                           flags, result):
  workdir = copy_workdir(trained_workdir("sri"), tmp_path)
  code, err = _stop_part_way([f"--mode={mode}", f"--workdir={workdir}", *flags], workdir,
                             result, signal.SIGTERM)
  assert code == 128 + signal.SIGTERM, err[-3000:]
  assert "Traceback" not in err
  assert [line for line in err.splitlines() if line.startswith("srlm:")] == [
      f"srlm: --mode={mode} stopped by SIGTERM: the finished batches are journaled in the "
      "workdir; run the same command again to resume."]


def test_a_line_cut_short_by_a_crash_is_run_again(tmp_path):
  settings = {"checkpoint_step": 1, "config": {"eval": {"seed": 0}}}
  first = journal.Journal(str(tmp_path), "eval_test", settings)
  values = {"nll": np.array([1.5, 2.25], np.float32), "z": np.arange(6.0).reshape(2, 3)}
  first.record("0", values, 1.0)
  first.record("1", values, 2.0)
  with open(first.path, "r+b") as f:  # kill -9 in the middle of the second line
    f.truncate(os.path.getsize(first.path) - 20)
  second = journal.Journal(str(tmp_path), "eval_test", settings)
  assert sorted(second.done) == ["0"] and second.total_seconds() == 1.0
  for name, value in values.items():
    assert second.done["0"][name].dtype == value.dtype
    np.testing.assert_array_equal(second.done["0"][name], value)
  second.record("1", values, 3.0)  # appended after the cut line, which stays unreadable
  assert sorted(journal.Journal(str(tmp_path), "eval_test", settings).done) == ["0", "1"]
  second.close()
  assert not os.path.exists(second.path)


def test_map_split_reuses_journaled_batches_and_counts_each_sentence_once(tmp_path, caplog):
  import jax  # pylint: disable=import-outside-toplevel
  from srlm import parallel  # pylint: disable=import-outside-toplevel
  from srlm.data import pipeline  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  sentences = [rng.integers(4, 30, rng.integers(3, 9)).astype(np.int32) for _ in range(10)]
  split = pipeline.Split("toy", sentences, np.arange(1, 11), {}, np.full(10, -1))
  calls = []

  def fn(batch, key):
    calls.append(1)
    del key
    return {"length": batch["mask"].sum(-1)}

  mesh = parallel.make_mesh(1)
  settings = {"toy": 1}
  first = journal.Journal(str(tmp_path), "toy", settings)
  expected = {}
  for indices, out in parallel.map_split(fn, split, (12,), 4, mesh, jax.random.key(0),
                                         journal=first):
    expected.update(zip(indices.tolist(), out["length"].tolist()))
  assert len(calls) == 3  # 10 sentences in batches of 4
  first.done.pop("2")  # as if stopped before the last batch
  lines = open(first.path).read().splitlines()
  with open(first.path, "w") as f:
    f.write("\n".join(lines[:-1]) + "\n")
  calls.clear()
  caplog.set_level("INFO")
  second = journal.Journal(str(tmp_path), "toy", settings)
  got = {}
  for indices, out in parallel.map_split(fn, split, (12,), 4, mesh, jax.random.key(0),
                                         label="toy", journal=second):
    got.update(zip(indices.tolist(), out["length"].tolist()))
  assert len(calls) == 1 and got == expected
  counts = [m.split(": ")[1].split(" ")[0] for m in caplog.messages if m.startswith("toy: ")]
  assert counts[-1] == "10/10"
