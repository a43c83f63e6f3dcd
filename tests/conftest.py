"""Shared fixtures: a session-wide TFDS cache, the shared data directory, tiny configs, and
tiny trained workdirs, each trained once per session (`trained_workdir`). Helpers that are not
fixtures live in helpers.py."""

import os
import shutil
import tempfile

import jax
import pytest

from srlm import cli
from srlm import config as config_lib
from srlm import train

from helpers import SHARED_DATA, short_run_flags

# Catch silent broadcasting bugs: (B, T) + (T,) must be written explicitly.
jax.config.update("jax_numpy_rank_promotion", "raise")
# The precision every test assumes: float32 matmuls at HIGHEST, full float32 on every backend
# (on GPUs and TPUs DEFAULT rounds their inputs, to TF32 on an H200, which moves an exact
# comparison by ~3e-4 relative). The entry points set their own: training runs at
# --config.train.matmul_precision (DEFAULT), evaluation at --config.eval.matmul_precision
# (HIGHEST), as for a user (srlm/runtime.py; tests/runtime_test.py tests the policy).
# SRLM_TEST_MATMUL_PRECISION=default runs the session at the backend's default instead
# (benchmarks/hardware_report.py lists what fails there on an accelerator).
jax.config.update("jax_default_matmul_precision",
                  os.environ.get("SRLM_TEST_MATMUL_PRECISION", "highest"))
# SRLM_TEST_DETERMINISTIC=1: XLA's deterministic ops for the whole session (set before the
# backend starts), so that on an accelerator the restart test can ask for equal bits.
if os.environ.get("SRLM_TEST_DETERMINISTIC", "") not in ("", "0"):
  from srlm import runtime  # pylint: disable=g-import-not-at-top
  runtime.set_deterministic(True)

# One persistent XLA compilation cache per test session: many tests compile the same tiny
# models (in this process and in the subprocesses, which inherit the variable), and a hit
# skips XLA's compiler. Keyed by the HLO and the compile options, so a hit is the same
# program; removed when the session ends.
_XLA_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  _XLA_CACHE = tempfile.mkdtemp(prefix="srlm-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


def pytest_sessionfinish(session, exitstatus):
  del exitstatus
  # With pytest-xdist the workers share the controller's cache: only the controller removes it.
  if _XLA_CACHE and not hasattr(session.config, "workerinput"):
    shutil.rmtree(_XLA_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
  """One prepared-data cache for the whole session (PTB is prepared once)."""
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))


@pytest.fixture
def tiny_config(tfds_dir) -> config_lib.Config:
  config = config_lib.tiny()
  config.data.dir = tfds_dir
  return config


@pytest.fixture(scope="session")
def shared_data():
  if not (SHARED_DATA / "ptb" / "ptb.train.txt").exists():
    pytest.skip(f"shared data not found at {SHARED_DATA} (set SRLM_SHARED_DATA)")
  return SHARED_DATA


@pytest.fixture(scope="session")
def trained_workdir(tfds_dir, tmp_path_factory):
  """trained_workdir(kind="sri", steps=3, *flags) -> the path of a workdir trained from the
  method's tiny flagfile on SHORT for `steps` steps, plus `flags`: trained once per session
  for each distinct call. Read it only; a test that writes into a workdir takes
  `copy_workdir(path, tmp_path)`."""
  done = {}

  def get(kind: str = "sri", steps: int = 3, *flags: str) -> str:
    key = (kind, steps, flags)
    if key not in done:
      workdir = str(tmp_path_factory.mktemp(f"trained_{kind}_{steps}"))
      config = cli.config_from_flags([*short_run_flags(tfds_dir, kind),
                                      f"--config.train.max_steps={steps}", *flags])
      assert train.train_and_evaluate(config, workdir)["step"] == steps
      done[key] = workdir
    return done[key]

  return get


@pytest.fixture(scope="session")
def tiny_decoder():
  """A small random decoder and a batch with padding: (model, params, batch)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from srlm.models import Decoder  # pylint: disable=import-outside-toplevel
  model = Decoder(vocab_size=23, embed_dim=8, hidden_dim=12, latent_dim=3, dropout=0.5,
                  init_scale=0.1)
  params = model.init(jax.random.key(0), jax.numpy.zeros((1, 3)),
                      jax.numpy.zeros((1, 2), jax.numpy.int32), deterministic=True)["params"]
  # The LSTM is weak at U(-0.1, 0.1); scale it up so z matters visibly.
  params = jax.tree.map(lambda x: 10 * x, params)
  rng = np.random.default_rng(0)
  ids = rng.integers(4, 23, (4, 7)).astype(np.int32)
  ids[:, 0] = 2
  lengths = np.array([7, 5, 3, 7])
  for row, n in enumerate(lengths):
    ids[row, n - 1] = 3
    ids[row, n:] = 0
  targets = ids[:, 1:]
  batch = {"inputs": ids[:, :-1], "targets": targets,
           "mask": (targets != 0).astype(np.float32)}
  return model, params, batch
