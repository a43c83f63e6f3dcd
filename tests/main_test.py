"""The command line: the tiny flagfile end to end, and bad input without tracebacks."""

import json
import os
import subprocess
import sys

import pytest

from srlm import config as config_lib
from srlm import train

from conftest import REPO


def test_tiny_flagfile_runs_end_to_end_in_process(tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  config = config_lib.from_flags(["--flagfile=launch/ptb_tiny.flags",
                                  f"--config.data.dir={tfds_dir}"])
  assert train.train_and_evaluate(config, workdir)["status"] == "completed"
  with open(os.path.join(workdir, "config.json")) as f:
    saved = config_lib.from_dict(json.load(f))
  assert saved.model.hidden_dim == 32 and saved.train.num_epochs == 2
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  valid = [r for r in records if r["split"] == "valid"]
  steps = [r for r in records if r["split"] == "train"]
  assert [r["epoch"] for r in valid] == [1, 2]
  assert valid[-1]["rec_per_token"] < valid[0]["rec_per_token"]
  assert steps[-1]["nll_per_token"] < steps[0]["nll_per_token"]
  for key in ("grad_norm_first", "grad_norm_last", "z_distance", "steps_per_sec"):
    assert steps[-1][key] > 0
  assert steps[-1]["grad_norm_last"] < steps[-1]["grad_norm_first"]


def _run(*flags, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "srlm.main", *flags], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def _assert_user_error(result, *phrases):
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "srlm: error:" in result.stderr
  for phrase in phrases:
    assert phrase in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize("flags,phrases", [
    (["--config.train.sed=1"], ["unknown config field --config.train.sed",
                                "--config.train has: num_epochs, learning_rate", "--help"]),
    (["--config.train.seed=one"], ["--config.train.seed=one", "invalid literal"]),
    (["--bogus=1"], ["Unknown command line flag 'bogus'"]),
    (["--flagfile=launch/missing.flags"], ["missing.flags"]),
    (["--config.langevin.num_steps=0"], ["--config.langevin.num_steps: must be >= 1"]),
    (["--config.train.gradient=both"], ["--config.train.gradient"]),
])
def test_bad_flags_get_one_message(flags, phrases, tmp_path):
  _assert_user_error(_run(f"--workdir={tmp_path}", *flags), *phrases)


def test_missing_workdir_is_explained():
  _assert_user_error(_run("--config.train.seed=1"), "--workdir is required")


def test_bad_corpus_files_are_named(tfds_dir, tmp_path):
  source = tmp_path / "corpus"
  source.mkdir()
  (source / "ptb.train.txt").write_bytes(b"fine\nbroken \xc3\x28 here\n")
  (source / "ptb.valid.txt").write_bytes(b"x\n")
  (source / "ptb.test.txt").write_bytes(b"y\n")
  _assert_user_error(_run(f"--workdir={tmp_path / 'w'}", f"--config.data.dir={tfds_dir}",
                          f"--config.data.source_dir={source}"), "ptb.train.txt, line 2")
  (source / "ptb.train.txt").write_bytes(b"fine\n")
  (source / "ptb.test.txt").unlink()
  _assert_user_error(_run(f"--workdir={tmp_path / 'w'}", f"--config.data.dir={tfds_dir}",
                          f"--config.data.source_dir={source}"), "ptb.test.txt does not exist")


def test_incompatible_and_corrupt_checkpoints_are_explained(tfds_dir, tmp_path):
  workdir = tmp_path / "run"
  common = ["--flagfile=launch/ptb_tiny.flags", f"--workdir={workdir}",
            f"--config.data.dir={tfds_dir}"]
  assert _run(*common, "--config.train.max_steps=2").returncode == 0
  _assert_user_error(_run(*common, "--config.model.hidden_dim=48"),
                     "--config.model.hidden_dim: checkpoint 32, now 48", "config.json")
  # Damage the array data of the only checkpoint.
  state_dir = workdir / "checkpoints" / "2" / "state"
  for path in state_dir.rglob("*"):
    if path.is_file() and "manifest" not in path.name and path.suffix != ".json":
      path.write_bytes(b"garbage")
  for path in state_dir.rglob("_METADATA"):
    path.write_bytes(b"{not json")
  _assert_user_error(_run(*common), "cannot be read", "checkpoints/2")


def test_eval_mode_writes_results_and_explains_bad_input(tfds_dir, tmp_path):
  workdir = tmp_path / "run"
  config = config_lib.from_flags(["--flagfile=launch/ptb_tiny.flags",
                                  f"--config.data.dir={tfds_dir}", "--config.train.max_steps=2"])
  train.train_and_evaluate(config, str(workdir))
  ok = _run("--mode=eval", f"--workdir={workdir}", "--config.eval.max_sentences=4",
            "--config.eval.num_samples=2", "--config.eval.split=valid")
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert "NLL" in ok.stdout and "eval_valid.json" in ok.stdout
  with open(workdir / "eval_valid.json") as f:
    assert json.load(f)["num_sentences"] == 4
  _assert_user_error(_run("--mode=eval", f"--workdir={workdir}", "--config.eval.split=dev"),
                     "--config.eval.split: unknown split 'dev'", "'test'")
  _assert_user_error(_run("--mode=eval", f"--workdir={workdir}", "--config.eval.num_samples=0"),
                     "--config.eval.num_samples: must be >= 1")
  _assert_user_error(_run("--mode=eval", f"--workdir={workdir}", "--config.model.latent_dim=16"),
                     "--config.model.latent_dim: checkpoint 8, now 16")
  _assert_user_error(_run("--mode=eval", f"--workdir={tmp_path / 'nothing'}"),
                     "no training run in")
  empty = tmp_path / "no_checkpoint"
  empty.mkdir()
  (empty / "config.json").write_text((workdir / "config.json").read_text())
  _assert_user_error(_run("--mode=eval", f"--workdir={empty}"), "no checkpoint in")
