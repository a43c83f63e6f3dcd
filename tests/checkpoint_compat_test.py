"""Workdirs trained before a change restore, resume and evaluate to the same numbers after it:
a tiny SRI workdir trained by srlm at commit 97def8a (tests/data/checkpoint_97def8a/README.md
says how it was made)."""

import json
import logging
import os
import shutil

import numpy as np

from helpers import REPO, run_cli

OLD = REPO / "tests" / "data" / "checkpoint_97def8a"
FLAGS = ("--flagfile=launch/ptb_tiny.flags", "--config.data.max_train_sentences=48",
         "--config.data.max_eval_sentences=8", "--config.data.buckets=(24,)",
         "--config.data.vocab_size=50", "--config.model.embed_dim=8",
         "--config.model.hidden_dim=8", "--config.model.latent_dim=2")


def test_a_workdir_trained_at_97def8a_evaluates_to_its_numbers_and_resumes(tfds_dir, tmp_path,
                                                                           capfd, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(OLD, workdir)
  evaluated = run_cli(capfd, "--mode=eval", f"--workdir={workdir}",
                      f"--config.data.dir={tfds_dir}", "--config.eval.max_sentences=4",
                      "--config.eval.num_samples=2", "--compilation_cache=off")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  got = json.loads((workdir / "eval_test.json").read_text())
  expected = json.loads((OLD / "expected_eval_test.json").read_text())
  # Evaluation runs at 'highest' precision: only JAX versions' summation orders differ.
  for key in ("nll", "nll_per_token", "rec", "kl", "mi"):
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, err_msg=key)
  assert (got["au"], got["checkpoint_step"]) == (expected["au"], 2)

  caplog.set_level(logging.INFO)
  resumed = run_cli(capfd, *FLAGS, f"--workdir={workdir}", f"--config.data.dir={tfds_dir}",
                    "--config.train.max_steps=3", "--compilation_cache=off")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert any(r.getMessage().startswith("Resumed from") and "at step 2" in r.getMessage()
             for r in caplog.records)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "3"]
