"""The backend policy of srlm/runtime.py: evaluation at full float32 whatever an accelerator's
DEFAULT would do (imitated here by rounding matmul inputs to TF32), the precision recorded and
validated, the deterministic mode, and the persistent compilation cache across processes."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srlm import config as config_lib
from srlm import evaluate
from srlm import runtime
from srlm.errors import ConfigError

from helpers import REPO, SHORT, assert_one_message, copy_workdir, run_cli, tiny_flagfile


def test_imitate_tf32_rounds_the_inputs_of_default_products_only():
  a = jax.random.normal(jax.random.key(0), (16, 64))
  b = jax.random.normal(jax.random.key(1), (64, 8))
  exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
  tf32 = lambda x: jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=10)
  with runtime.imitate_tf32():
    with runtime.matmul_precision("default"):
      rounded = jax.jit(lambda x, y: x @ y)(a, b)
      grad = jax.jit(jax.grad(lambda x: jnp.sum(x @ b)))(a)
    with runtime.matmul_precision("highest"):
      full = jax.jit(lambda x, y: x @ y)(a, b)
  # DEFAULT: the product of the rounded inputs (TF32 keeps ~3 decimal digits, so it is off by
  # about 1e-3 relative), and the gradient's products are rounded too.
  np.testing.assert_allclose(rounded, tf32(a) @ tf32(b), rtol=1e-6, atol=1e-5)
  assert np.max(np.abs(rounded - exact)) > 1e-3
  np.testing.assert_allclose(grad, jnp.ones((16, 8)) @ tf32(b).T, rtol=1e-6, atol=1e-5)
  # HIGHEST: untouched, float32 rounding of the exact product only.
  np.testing.assert_allclose(full, exact, rtol=1e-5, atol=1e-4)
  # Nothing traced inside is reused outside.
  np.testing.assert_allclose(jax.jit(lambda x, y: x @ y)(a, b), exact, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("estimator", ["is", "ais"])
def test_evaluation_stays_where_it_is_under_an_accelerators_default_precision(
    estimator, trained_workdir, tmp_path):
  """The policy: evaluation at eval.matmul_precision=highest gives the same per-sentence NLLs
  with every float32 product's inputs rounded to TF32 (what DEFAULT does on a GPU) as without;
  at 'default' the rounding reaches them (so this test would see a product the policy missed)."""
  workdir = copy_workdir(trained_workdir("sri", 3), tmp_path)
  overrides = {"eval.max_sentences": 4, "eval.num_samples": 2, "eval.estimator": estimator,
               "eval.ais_steps": 5, "eval.ais_chains": 2}

  def nll(**more):
    config = config_lib.load_run_config(workdir, {**overrides, **more})
    result = evaluate.evaluate_workdir(config, workdir)
    return np.asarray(result["sentence_nll"]), result["matmul_precision"]

  reference, precision = nll()
  assert precision == "highest"
  with runtime.imitate_tf32():
    kept, _ = nll()
    moved, precision = nll(**{"eval.matmul_precision": "default"})
  assert precision == "default"
  # The CPU's HIGHEST and DEFAULT are both full float32: the same program, the same numbers.
  np.testing.assert_array_equal(kept, reference)
  # (By little at these sizes, a few 1e-7 relative; benchmarks/precision.py has PTB sizes.)
  assert np.any(moved != reference), moved - reference


def test_precision_is_validated_and_recorded_by_every_mode(trained_workdir, tmp_path, capfd):
  workdir = copy_workdir(trained_workdir("sri", 3), tmp_path)
  assert_one_message(run_cli(capfd, f"--workdir={workdir}", "--mode=eval",
                             "--config.eval.matmul_precision=medium"),
                     2, "--config.eval.matmul_precision", "'medium'")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    train_records = [r for r in map(json.loads, f) if r["split"] == "train"]
  # Training ran at its own precision, whatever the session's global (HIGHEST, conftest).
  assert {r["matmul_precision"] for r in train_records} == {"default"}
  result = run_cli(capfd, f"--workdir={workdir}", "--mode=eval",
                   "--config.eval.max_sentences=2", "--config.eval.num_samples=2",
                   "--config.eval.matmul_precision=high")
  assert result.returncode == 0, result.stderr[-2000:]
  with open(os.path.join(workdir, "eval_test.json")) as f:
    assert json.load(f)["matmul_precision"] == "high"


def test_deterministic_mode_cannot_start_once_the_backend_has():
  jax.numpy.zeros(1).block_until_ready()  # the backend is up in this process
  if runtime.deterministic_in_force():
    pytest.skip("XLA_FLAGS already ask for deterministic ops")
  with pytest.raises(ConfigError, match="--config.train.deterministic"):
    runtime.set_deterministic(True)
  runtime.set_deterministic(False)  # nothing to do, no error


def _train(workdir, tfds_dir, cache, *flags, jax_cache_dir=None):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "SRLM_CACHE_DIR")}
  if jax_cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = jax_cache_dir
  return subprocess.run(
      [sys.executable, "-m", "srlm.main", f"--flagfile={tiny_flagfile('sri')}",
       f"--config.data.dir={tfds_dir}", *SHORT, "--config.train.max_steps=4",
       "--config.train.log_every_steps=2", f"--workdir={workdir}",
       f"--compilation_cache={cache}", *flags],
      cwd=REPO, capture_output=True, text=True, env=env, check=False)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["nll_per_token"] for r in map(json.loads, f) if r["split"] == "train"]


def test_a_second_process_compiles_nothing_and_deterministic_mode_changes_no_number(
    tfds_dir, tmp_path):
  """Two trainings of the same config in two fresh processes sharing a compilation cache: the
  second reuses every program (it compiles nothing). A third, in deterministic mode (XLA's flag
  set before the backend starts, as its log says) with the cache off, trains to the same
  losses: on the CPU bit for bit, on a GPU within float tolerance (the mode must not change
  the maths, see runtime.DETERMINISTIC_XLA_FLAGS)."""
  cache = str(tmp_path / "xla_cache")
  first = _train(tmp_path / "first", tfds_dir, cache)
  assert first.returncode == 0, first.stderr[-3000:]
  second = _train(tmp_path / "second", tfds_dir, cache)
  assert second.returncode == 0, second.stderr[-3000:]
  line = [l for l in second.stderr.splitlines() if "Compilation cache" in l]
  assert line and line[-1].endswith(" 0 compiled."), line
  assert int(line[-1].split(": ")[-1].split(" programs reused")[0]) > 0, line
  # Off means off, also where the environment names a cache that JAX itself would use.
  jax_cache = tmp_path / "jax_env_cache"
  jax_cache.mkdir()
  third = _train(tmp_path / "third", tfds_dir, "off", "--config.train.deterministic",
                 jax_cache_dir=str(jax_cache))
  assert third.returncode == 0, third.stderr[-3000:]
  assert not os.listdir(jax_cache)
  assert "Deterministic mode: XLA_FLAGS=--xla_gpu_deterministic_ops=true" in third.stderr
  assert "deterministic ops" in third.stderr  # the training line says so
  assert "Compilation cache" not in third.stderr  # off with one flag
  if jax.default_backend() == "cpu":
    assert _losses(tmp_path / "third") == _losses(tmp_path / "first")
  else:
    np.testing.assert_allclose(_losses(tmp_path / "third"), _losses(tmp_path / "first"),
                               rtol=1e-4)
