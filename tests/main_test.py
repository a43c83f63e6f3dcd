"""The command line, where the user meets it: the tiny flagfile end to end, and every row of
README's exit-code table as exit code, one message line and no traceback. In-process
(srlm.cli.main returns the exit code) except where a real process is the point."""

import json
import os

import pytest

from srlm import config as config_lib

from helpers import assert_one_message, copy_workdir, run_cli, run_cli_process, short_run_flags


def test_tiny_flagfile_runs_end_to_end(tfds_dir, tmp_path, capfd):
  workdir = str(tmp_path / "run")
  result = run_cli(capfd, "--flagfile=launch/ptb_tiny.flags", f"--workdir={workdir}",
                   f"--config.data.dir={tfds_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
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


@pytest.mark.parametrize("flags,phrases", [
    (["--config.train.sed=1"], ["unknown config field --config.train.sed",
                                "--config.train has: num_epochs, learning_rate", "--help"]),
    (["--config.train.seed=one"], ["--config.train.seed=one", "invalid literal"]),
    (["--bogus=1"], ["Unknown command line flag 'bogus'"]),
    (["--flagfile=launch/missing.flags"], ["missing.flags"]),
    (["--config.langevin.num_steps=0"], ["--config.langevin.num_steps: must be >= 1"]),
    (["--config.train.gradient=both"], ["--config.train.gradient"]),
    (["--mode=dance"], ["--mode", "dance"]),
    (["stray"], ["unexpected arguments ['stray']"]),
])
def test_bad_flags_get_one_message(flags, phrases, tmp_path, capfd):
  assert_one_message(run_cli(capfd, f"--workdir={tmp_path}", *flags), 2, *phrases)


def test_bad_flagfiles_get_one_message_naming_file_and_line(tmp_path, capfd):
  """Found while the flags are defined (ml_collections reads the overrides then): the same one
  handler, exit 2, no traceback."""
  garbage = tmp_path / "garbage.flags"
  garbage.write_text("# a comment\n--config.train.seed=1\nhello world\n")
  assert_one_message(run_cli(capfd, f"--flagfile={garbage}", f"--workdir={tmp_path}"), 2,
                     f"flagfile {garbage}, line 3: 'hello world' is not a flag")
  binary = tmp_path / "binary.flags"
  binary.write_bytes(b"--config.train.seed=1\n--config.data.dir=\xff\xfe\n")
  including = tmp_path / "including.flags"
  including.write_text(f"--flagfile={binary}\n")
  assert_one_message(run_cli(capfd, f"--flagfile={including}", f"--workdir={tmp_path}"), 2,
                     f"flagfile {binary}, line 2: not UTF-8")
  assert_one_message(run_cli(capfd, "--config.trian.seed=1", f"--workdir={tmp_path}"), 2,
                     "unknown config section --config.trian; the sections are: data, model")


def test_missing_workdir_is_explained(capfd):
  assert_one_message(run_cli(capfd, "--config.train.seed=1"), 2, "--workdir is required")


def test_bad_corpus_files_are_named(tfds_dir, tmp_path, capfd):
  source = tmp_path / "corpus"
  source.mkdir()
  (source / "ptb.train.txt").write_bytes(b"fine\nbroken \xc3\x28 here\n")
  (source / "ptb.valid.txt").write_bytes(b"x\n")
  (source / "ptb.test.txt").write_bytes(b"y\n")
  common = (f"--workdir={tmp_path / 'w'}", f"--config.data.dir={tfds_dir}",
            f"--config.data.source_dir={source}")
  assert_one_message(run_cli(capfd, *common), 2, "ptb.train.txt, line 2")
  (source / "ptb.train.txt").write_bytes(b"fine\n")
  (source / "ptb.test.txt").unlink()
  assert_one_message(run_cli(capfd, *common), 2, "ptb.test.txt does not exist")


def test_incompatible_and_corrupt_checkpoints_are_explained(trained_workdir, tfds_dir, tmp_path,
                                                           capfd):
  workdir = copy_workdir(trained_workdir("sri", 3), tmp_path)
  assert_one_message(run_cli(capfd, *short_run_flags(tfds_dir), f"--workdir={workdir}",
                             "--config.model.hidden_dim=48"), 2,
                     "--config.model.hidden_dim: checkpoint 32, now 48", "config.json")
  # Damage the array data of the only checkpoint. A process of its own: the failed restore's
  # abandoned reads are collected at its exit, and must not print there either.
  state_dir = os.path.join(workdir, "checkpoints", "3", "state")
  for root, _, files in os.walk(state_dir):
    for name in files:
      path = os.path.join(root, name)
      if name == "_METADATA":
        with open(path, "w") as f:
          f.write("{not json")
      elif "manifest" not in name and not name.endswith(".json"):
        with open(path, "wb") as f:
          f.write(b"garbage")
  assert_one_message(run_cli_process("--mode=eval", f"--workdir={workdir}"), 2,
                     "cannot be read", "checkpoints/3")


def test_eval_mode_writes_results_and_explains_bad_input(trained_workdir, tmp_path, capfd):
  workdir = copy_workdir(trained_workdir("sri", 3), tmp_path)
  ok = run_cli(capfd, "--mode=eval", f"--workdir={workdir}", "--config.eval.max_sentences=4",
               "--config.eval.num_samples=2", "--config.eval.split=valid")
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert "NLL" in ok.stdout and "eval_valid.json" in ok.stdout
  assert "chain step sizes: the run's (config)" in ok.stdout
  with open(os.path.join(workdir, "eval_valid.json")) as f:
    assert json.load(f)["num_sentences"] == 4
  assert_one_message(run_cli(capfd, "--mode=eval", f"--workdir={workdir}",
                             "--config.eval.split=dev"),
                     2, "--config.eval.split: unknown split 'dev'", "'test'")
  assert_one_message(run_cli(capfd, "--mode=eval", f"--workdir={workdir}",
                             "--config.eval.num_samples=0"),
                     2, "--config.eval.num_samples: must be >= 1")
  assert_one_message(run_cli(capfd, "--mode=eval", f"--workdir={workdir}",
                             "--config.model.latent_dim=16"),
                     2, "--config.model.latent_dim: checkpoint 8, now 16")
  assert_one_message(run_cli(capfd, "--mode=eval", f"--workdir={tmp_path / 'nothing'}"),
                     2, "no training run in")
  empty = tmp_path / "no_checkpoint"
  empty.mkdir()
  with open(os.path.join(workdir, "config.json")) as f:
    (empty / "config.json").write_text(f.read())
  assert_one_message(run_cli(capfd, "--mode=eval", f"--workdir={empty}"), 2,
                     "no checkpoint in")


def test_divergence_exits_3_naming_the_last_checkpoint(trained_workdir, tfds_dir, tmp_path,
                                                       capfd):
  workdir = copy_workdir(trained_workdir("sri", 3), tmp_path)
  result = run_cli(capfd, *short_run_flags(tfds_dir), f"--workdir={workdir}", "--config.train.learning_rate=1e38",
                   "--config.train.max_steps=6", "--config.train.num_epochs=3",
                   "--config.train.log_every_steps=1")
  assert_one_message(result, 3, "training diverged between steps", "became non-finite",
                     "the last checkpoint, step 4")


def test_help_lists_the_config_fields_and_exits_0(capfd):
  result = run_cli(capfd, "--help")
  assert result.returncode == 0, result.stderr
  for text in ("--workdir", "--mode", "fit_step_sizes: (SRI runs)",
               "--config.langevin.step_sizes: tuple[float, ...]",
               "--config.vae.free_bits: float = 0.0", "Free bits"):
    assert text in result.stdout, text


def test_the_entry_point_exits_with_mains_code():
  """`python -m srlm.main` is cli.run: a real process's exit code is main's."""
  assert_one_message(run_cli_process("--config.train.seed=1"), 2, "--workdir is required")
