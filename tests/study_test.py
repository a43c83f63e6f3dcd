"""The study scripts' own logic (benchmarks/study.py, benchmarks/study_short_yelp.py): what a
table row is made of, paired differences, and which flags each run trains with. The runs
themselves are hours of CPU and are not run here."""

import json
import math
import os
import subprocess
import sys

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import study  # pylint: disable=wrong-import-position


def _eval_json(nll_by_line: dict[int, float], **extra) -> dict:
  nll = sum(nll_by_line.values()) / len(nll_by_line)
  return {"model_kind": "sri", "checkpoint_step": 7, "nll": nll, "ppl": math.exp(nll / 10),
          "kl": 2.0, "mi": 0.5, "au": 3, "rec": nll - 1.0,
          "num_sentences": len(nll_by_line), "num_samples": 10,
          "sentence_lines": list(nll_by_line), "sentence_nll": list(nll_by_line.values()),
          **extra}


def _ais_json(nll_by_line: dict[int, float]) -> dict:
  return _eval_json(nll_by_line, ais_acceptance_rate=0.7, ais_ess=2.5, estimator="ais",
                    nll_seconds=12.0)


def _write(path, name, content):
  path.mkdir(parents=True, exist_ok=True)
  (path / name).write_text(json.dumps(content))


def test_row_stands_on_ais_alone_and_gains_the_own_estimate_when_it_exists(tmp_path):
  workdir = tmp_path / "sri"
  _write(workdir, "eval_test_ais.json", _ais_json({1: 10.0, 2: 20.0}))
  row = study._row("sri", "SRI", str(workdir), "eval_test.json", {"train_s": 5.0})
  assert row["ais_nll"] == 15.0 and row["checkpoint_step"] == 7 and row["train_s"] == 5.0
  # The own-estimate columns exist, blank, so the table prints empty cells.
  assert all(row[k] is None for k in study.OWN_COLUMNS)
  assert "nll_on_ais_sentences" not in row

  # The own estimate ran on more sentences (AIS's are its first ones): the row compares them
  # on AIS's sentences only.
  _write(workdir, "eval_test.json", _eval_json({1: 12.0, 2: 24.0, 3: 100.0}))
  row = study._row("sri", "SRI", str(workdir), "eval_test.json", {})
  assert row["nll"] == pytest.approx(136.0 / 3)
  assert row["nll_on_ais_sentences"] == 18.0
  assert row["elbo"] == -(row["rec"] + row["kl"])

  # The fitted row: its own estimate on AIS's sentences too, but no AIS columns of its own
  # (its decoder, so its AIS score, is the plain row's).
  _write(workdir, "eval_test_fitted.json", _eval_json({1: 11.0, 2: 22.0, 3: 90.0}))
  fitted = study._row("sri_fitted", "fitted", str(workdir), "eval_test_fitted.json", {})
  assert fitted["nll_on_ais_sentences"] == 16.5 and "ais_nll" not in fitted


def test_paired_difference_is_per_sentence_and_refuses_other_sentences(tmp_path):
  for name, nll in (("a", {1: 11.0, 2: 23.0, 3: 30.0}), ("b", {1: 10.0, 2: 20.0, 3: 31.0})):
    _write(tmp_path / name, "eval_test_ais.json", _ais_json(nll))
  a, b = (study._row(n, n, str(tmp_path / n), "eval_test.json", {}) for n in "ab")
  pair = study.paired_difference(a, b)
  differences = [1.0, 3.0, -1.0]
  mean = sum(differences) / 3
  stderr = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2 / 3)
  assert pair["mean"] == pytest.approx(mean) and pair["stderr"] == pytest.approx(stderr)
  _write(tmp_path / "c", "eval_test_ais.json", _ais_json({1: 1.0, 4: 2.0, 5: 3.0}))
  c = study._row("c", "c", str(tmp_path / "c"), "eval_test.json", {})
  with pytest.raises(SystemExit, match="different sentences"):
    study.paired_difference(a, c)


def test_budget_multiplies_the_training_sentences_only():
  small, budget = study._scale_flags("small", 1), study._scale_flags("small", 4)
  changed = [(x, y) for x, y in zip(small, budget) if x != y]
  assert changed == [("--config.data.max_train_sentences=3200",
                      "--config.data.max_train_sentences=12800")]
  with pytest.raises(SystemExit, match="--budget applies to --scale=small"):
    study._scale_flags("paper", 4)


def test_short_yelp_scale_flags_for_one_run_reach_that_run_only():
  # A separate process: both study scripts define absl flags of the same names.
  code = ("import json, sys; sys.path.insert(0, 'benchmarks'); import study_short_yelp as s; "
          "print(json.dumps({n: [f, s.train_args(n, 'small', [], 'W')] "
          "for n, (f, _) in s.RUNS.items()}))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True, timeout=120).stdout
  runs = json.loads(out.splitlines()[-1])
  args = {name: run_args for name, (_, run_args) in runs.items()}
  aggressive = "--config.vae.aggressive_epochs=2"
  assert aggressive in args["vae_aggressive"]
  assert all(aggressive not in a for name, a in args.items() if name != "vae_aggressive")
  assert all(a[0] == f"--flagfile={flagfile}" and a[-1] == "--workdir=W"
             for flagfile, a in runs.values())


# Runs study._run_all with srlm.main replaced by a stand-in that writes the file each command
# would write, and prints the commands in order (one per line, as JSON).
_RUN_ALL = """
import json, os, sys
sys.path.insert(0, 'benchmarks')
import study
from absl import flags
flags.FLAGS(['study', *sys.argv[2:]])
calls = []
def fake_run_srlm(args, log_path):
  workdir = next(a.split('=', 1)[1] for a in args if a.startswith('--workdir='))
  os.makedirs(workdir, exist_ok=True)
  written = {'--mode=bdmc': 'bdmc.json', '--mode=eval': 'eval_test.json'}
  name = next((written[a] for a in args if a in written), None)
  if '--config.eval.estimator=ais' in args:
    name = 'eval_test_ais.json'
  if '--config.eval.step_sizes=fitted' in args:
    name = 'eval_test_fitted.json'
  if name:
    open(os.path.join(workdir, name), 'w').close()
  mode = next((a for a in args if a.startswith('--mode=')), '--mode=train')
  if mode == '--mode=train':
    os.makedirs(os.path.join(workdir, 'checkpoints'), exist_ok=True)
  calls.append([os.path.basename(workdir), mode.split('=')[1], name])
  return 1.0
study.common.run_srlm = fake_run_srlm
study._run_all('small', int(os.environ.get('BUDGET', '1')), sys.argv[1],
               archive=os.environ.get('ARCHIVE', ''))
print(json.dumps(calls))
"""


def _run_all(root, *flag_args, budget=1, archive=""):
  out = subprocess.run([sys.executable, "-c", _RUN_ALL, str(root), *flag_args], cwd=REPO,
                       capture_output=True, text=True, check=True, timeout=120,
                       env={**os.environ, "BUDGET": str(budget), "ARCHIVE": str(archive)}
                       ).stdout
  return json.loads(out.splitlines()[-1])


def test_a_study_spans_machines_through_its_archive(tmp_path):
  """A machine's workdirs are lost between sessions; the archive (committed) keeps each run's
  result files as they land: a new machine skips the scored runs, and the passes that need a
  checkpoint are skipped for them, said so."""
  archive, first, second = tmp_path / "archive", tmp_path / "first", tmp_path / "second"
  _run_all(first, "--nosecond_pass", "--only=lm,sri", archive=archive)
  assert sorted(os.listdir(archive)) == ["lm", "seconds.json", "sri"]
  assert sorted(os.listdir(archive / "sri")) == ["eval_test_ais.json"]
  calls = _run_all(second, "--only=lm,sri,vae_fb", archive=archive)
  # Only the new run is trained and scored; the archived ones get no BDMC or own estimate
  # (no checkpoint on this machine), the new one gets both.
  assert calls == [["vae_fb", "train", None], ["vae_fb", "eval", "eval_test_ais.json"],
                   ["vae_fb", "bdmc", "bdmc.json"], ["vae_fb", "eval", "eval_test.json"]]
  assert (second / "sri" / "eval_test_ais.json").exists()
  assert sorted(os.listdir(archive / "vae_fb")) == ["bdmc.json", "eval_test.json",
                                                   "eval_test_ais.json"]
  times = json.loads((archive / "seconds.json").read_text())
  assert sorted(times) == ["lm", "sri", "vae_fb"]


def test_study_scores_every_run_with_ais_first_and_resumes_without_redoing_work(tmp_path):
  calls = _run_all(tmp_path, "--nosecond_pass", budget=4)
  # The AIS pass alone: each budget run trained, then scored with AIS, nothing else.
  assert calls == [[n, m, f] for n in study.ORDER if n in study.BUDGET_RUNS
                   for m, f in (("train", None), ("eval", "eval_test_ais.json"))]

  # A run stopped before its AIS landed (here: its file removed) is resumed and scored again.
  unscored = study.BUDGET_RUNS[-1]
  os.remove(tmp_path / unscored / "eval_test_ais.json")
  train_seconds = json.loads((tmp_path / "seconds.json").read_text())
  calls = _run_all(tmp_path, budget=4)
  # Resumed: only that run is trained (resumed from its checkpoint) and scored with AIS again;
  # the scored runs' training is not called, so their minutes do not grow.
  assert calls[:2] == [[unscored, "train", None], [unscored, "eval", "eval_test_ais.json"]]
  rest = calls[2:]
  assert all(c[1] != "train" and c[2] != "eval_test_ais.json" for c in rest)
  times = json.loads((tmp_path / "seconds.json").read_text())
  assert {n: t["train_s"] for n, t in times.items()} == {
      n: t["train_s"] + (n == unscored) for n, t in train_seconds.items()}
  # BDMC on every BDMC run before any own estimate (the slow SRI log-det evals come last).
  modes = [c[1] for c in rest]
  assert modes == ["bdmc"] * len(study.BDMC_RUNS) + ["eval"] * len(study.BUDGET_RUNS)
  assert sorted(c[0] for c in rest if c[1] == "bdmc") == sorted(study.BDMC_RUNS)
  # No fitted row at a larger budget.
  assert all(c[2] != "eval_test_fitted.json" for c in calls)

  # Everything done: nothing is called.
  assert _run_all(tmp_path, budget=4) == []


def test_budget_changes_pair_each_run_with_itself_and_with_the_lm_at_each_budget(tmp_path):
  nll = {("1", "lm"): {1: 20.0, 2: 30.0, 3: 40.0}, ("1", "sri"): {1: 21.0, 2: 31.0, 3: 42.0},
         ("4", "lm"): {1: 18.0, 2: 27.0, 3: 36.0}, ("4", "sri"): {1: 17.0, 2: 27.0, 3: 34.0}}
  rows = {b: [] for b in "14"}
  for (b, run), by_line in nll.items():
    _write(tmp_path / b / run, "eval_test_ais.json", _ais_json(by_line))
    rows[b].append(study._row(run, run, str(tmp_path / b / run), "eval_test.json", {}))
  lm, sri = study.budget_changes(rows["4"], rows["1"])
  assert lm["run"] == "lm" and "versus_lm" not in lm
  assert lm["nll_change"]["mean"] == pytest.approx(-3.0)
  assert sri["nll_change"]["mean"] == pytest.approx((-4.0 - 4.0 - 8.0) / 3)
  assert sri["versus_lm_1"]["mean"] == pytest.approx(4.0 / 3)
  assert sri["versus_lm"]["mean"] == pytest.approx(-1.0)


def test_full_data_trains_its_own_runs_in_its_order_and_compares_own_estimates_on_shared_sentences(
    tmp_path):
  # The headline convention first; --only adds the optional runs in ORDER's order after them.
  assert study.run_names("full_data", 1, []) == ["lm", "sri_accumulated", "sri", "vae_fb"]
  assert study.run_names("full_data", 1, ["sri_learned", "lm"]) == ["lm", "sri_learned"]
  assert study.run_names("small", 4, []) == [n for n in study.ORDER if n in study.BUDGET_RUNS]
  with pytest.raises(SystemExit, match="full_data uses all of PTB"):
    study._scale_flags("full_data", 4)
  assert "--config.train.num_epochs=2" in study.SCALES["full_data"]
  # The own estimate on the first 2 of AIS's 3 sentences: both compared on those 2 only.
  workdir = tmp_path / "sri"
  _write(workdir, "eval_test_ais.json", _ais_json({1: 10.0, 2: 20.0, 3: 90.0}))
  _write(workdir, "eval_test.json", _eval_json({1: 12.0, 2: 24.0}))
  row = study._row("sri", "SRI", str(workdir), "eval_test.json", {})
  assert row["ais_nll"] == 40.0 and row["shared_sentences"] == 2
  assert row["nll_on_ais_sentences"] == 18.0 and row["ais_nll_on_shared_sentences"] == 15.0


def test_minutes_per_epoch_come_from_the_median_window(tmp_path):
  """Slow windows (compilation, a resumed invocation's start) do not move it; the mean would."""
  records = [{"step": 2, "split": "train", "steps_per_sec": 0.1},  # compilation
             *({"step": s, "split": "train", "steps_per_sec": v}
               for s, v in ((4, 2.0), (6, 1.5), (8, 2.0))),
             {"step": 8, "split": "valid"},
             {"step": 10, "split": "train", "steps_per_sec": 0.2},  # a resumed invocation
             {"step": 12, "split": "train", "steps_per_sec": 2.0},
             {"step": 14, "split": "train", "steps_per_sec": 2.0}]
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  timing = study.epoch_minutes(str(path))
  assert timing["steps_per_epoch"] == 8 and timing["median_steps_per_sec"] == 2.0
  assert timing["minutes_per_epoch"] == pytest.approx(8 / 2.0 / 60)
