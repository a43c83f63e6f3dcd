"""Shared fixtures: a session-wide TFDS cache, the shared data directory, tiny configs."""

import dataclasses
import os
import pathlib

import jax
import pytest

from srlm import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("SRLM_SHARED_DATA", REPO.parent / "shared" / "data"))

# Catch silent broadcasting bugs: (B, T) + (T,) must be written explicitly.
jax.config.update("jax_numpy_rank_promotion", "raise")


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
def shared_data() -> pathlib.Path:
  if not (SHARED_DATA / "ptb" / "ptb.train.txt").exists():
    pytest.skip(f"shared data not found at {SHARED_DATA} (set SRLM_SHARED_DATA)")
  return SHARED_DATA


def replace(config: config_lib.Config, **sections) -> config_lib.Config:
  """A copy of config with fields replaced per section: replace(c, train={"seed": 1})."""
  return dataclasses.replace(config, **{
      name: dataclasses.replace(getattr(config, name), **fields)
      for name, fields in sections.items()})


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
