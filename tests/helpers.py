"""What tests share besides fixtures: paths, config edits, random batches, and the command line
run in-process (or, where a real process is the point, as one) with its one-message check."""

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from srlm import cli
from srlm import config as config_lib
from srlm import journal
from srlm.data import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("SRLM_SHARED_DATA", REPO.parent / "shared" / "data"))
VOCAB = 40  # the vocabulary of random_batch
# The short run most tests train (conftest's trained_workdir): one bucket of 24 tokens (one
# compilation), 48 training sentences (6 batches of 8), 8 evaluation sentences.
SHORT = ("--config.data.max_train_sentences=48", "--config.data.max_eval_sentences=8",
         "--config.data.buckets=(24,)")


def tiny_flagfile(kind: str = "sri") -> str:
  """launch/ptb_<kind>_tiny.flags; the default method's is launch/ptb_tiny.flags."""
  return "launch/ptb_tiny.flags" if kind == "sri" else f"launch/ptb_{kind}_tiny.flags"


def short_run_flags(tfds_dir: str, kind: str = "sri") -> list[str]:
  """The flags of conftest's trained_workdir(kind, ...) runs, without the step count: what a
  command resuming or refusing such a workdir passes."""
  return [f"--flagfile={tiny_flagfile(kind)}", f"--config.data.dir={tfds_dir}", *SHORT]


def copy_workdir(path: str, tmp_path) -> str:
  """A copy of a (shared, read-only) trained workdir that a test may write into."""
  target = str(tmp_path / "workdir_copy")
  shutil.copytree(path, target, ignore=shutil.ignore_patterns(".trainer.lock"))
  return target


def replace(config: config_lib.Config, **sections) -> config_lib.Config:
  """A copy of config with fields replaced per section: replace(c, train={"seed": 1})."""
  return dataclasses.replace(config, **{
      name: dataclasses.replace(getattr(config, name), **fields)
      for name, fields in sections.items()})


def random_batch(length: int, batch_size: int = 4, num_real: int = 3, seed: int = 0):
  """A batch of `num_real` random sentences of ids < VOCAB (the rest padding rows) of bucket
  `length`, in epoch 0."""
  rng = np.random.default_rng(seed)
  sentences = [rng.integers(4, VOCAB, rng.integers(2, length - 1)).astype(np.int32)
               for _ in range(num_real)]
  return {**pipeline.make_batch(sentences, length, batch_size), "epoch": np.int32(0)}


class CliResult(NamedTuple):
  returncode: int
  stdout: str
  stderr: str


def run_cli(capfd, *flags) -> CliResult:
  """`python -m srlm.main FLAGS`, in this process (srlm.cli.main), with what it printed. The
  working directory is the repository's, as for the flagfiles' relative paths."""
  capfd.readouterr()  # what earlier code printed is not this command's
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    code = cli.main(["srlm", *flags])
  finally:
    os.chdir(cwd)
  out, err = capfd.readouterr()
  return CliResult(code, out, err)


def run_cli_process(*flags, env=None, timeout=300) -> CliResult:
  """The command line as a process of its own: for what only a process shows (its exit
  handling and teardown, signals, a runtime that must start fresh)."""
  result = subprocess.run([sys.executable, "-m", "srlm.main", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)
  return CliResult(result.returncode, result.stdout, result.stderr)


def assert_one_message(result: CliResult, code: int, *phrases) -> str:
  """Exit `code`, exactly one 'srlm: error:' line holding the phrases, and no traceback;
  returns that line."""
  assert result.returncode == code, result.stderr[-3000:]
  assert "Traceback" not in result.stderr and "pybind11" not in result.stderr, (
      result.stderr[-3000:])
  errors = [line for line in result.stderr.splitlines() if line.startswith("srlm: error:")]
  assert len(errors) == 1, result.stderr[-3000:]
  for phrase in phrases:
    assert phrase in errors[0], errors[0]
  return errors[0]


def journaled_batches(workdir: str, result: str = "") -> int:
  """The finished batches journaled in workdir (of one result, or of all)."""
  import glob  # pylint: disable=import-outside-toplevel
  paths = glob.glob(os.path.join(workdir, journal.DIRECTORY, f"{result}*.jsonl"))
  return sum(sum(1 for _ in open(p)) - 1 for p in paths)


def per_example_value_grad_hessian(
    logdensity_fn: Callable[[jax.Array], jax.Array]):
  """Autodiff Hessians of independent per-example log densities (B, D) -> (B,).

  Chain b's density depends on z_b only, so the Hessian of the batch sum is block diagonal and
  D Hessian-vector products, each with the same unit direction for every chain, give every
  block. The reference the tests hold srlm's fast exact version for the LSTM decoder
  (`methods.sri.decoder_value_grad_hessian`) against, and the Hessians of their toy models.
  """
  def fn(z_BxD):
    grad_fn = jax.grad(lambda z: jnp.sum(logdensity_fn(z)))

    def hvp(direction_D):
      return jax.jvp(grad_fn, (z_BxD,), (jnp.broadcast_to(direction_D[None], z_BxD.shape),))[1]

    columns_DxBxD = jax.vmap(hvp)(jnp.eye(z_BxD.shape[-1], dtype=z_BxD.dtype))
    return logdensity_fn(z_BxD), grad_fn(z_BxD), jnp.transpose(columns_DxBxD, (1, 2, 0))
  return fn
