"""The study scripts' own logic (benchmarks/study.py, benchmarks/study_short_yelp.py): what a
table row is made of, paired differences, and which flags each run trains with. The runs
themselves are hours of CPU and are not run here."""

import json
import math
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
  path.mkdir(exist_ok=True)
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
