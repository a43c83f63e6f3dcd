"""A trained workdir, restored for evaluation and the latent-space modes (read-only)."""

import os
from typing import Any, NamedTuple

import jax

from srlm import checkpointing
from srlm import methods
from srlm import parallel
from srlm import state as state_lib
from srlm.config import Config
from srlm.data import pipeline
from srlm.errors import UserError


class TrainedRun(NamedTuple):
  """A workdir's latest checkpoint with what is needed to use it."""
  corpus: pipeline.Corpus
  method: methods.Method
  params: dict[str, Any]
  step: int
  mesh: jax.sharding.Mesh  # the devices it was restored onto, for the modes that use it
  config: Config  # the config it was restored under (method was built from it)


def restore_trained(config: Config, workdir: str,
                    mesh: jax.sharding.Mesh | None = None) -> TrainedRun:
  """Loads the corpus and the workdir's latest checkpoint, read-only, replicated on `mesh`
  (None: built from config.parallel). Raises UserError when there is no checkpoint or it does
  not fit the config."""
  methods.validate(config)
  directory = checkpointing.checkpoint_dir(workdir)
  no_checkpoint = UserError(f"no checkpoint in {directory}: train first "
                            f"(python -m srlm.main --workdir={workdir} ...).")
  if not os.path.isdir(directory):
    raise no_checkpoint
  corpus = parallel.load_corpus(config.data)
  method = methods.get(config, len(corpus.vocab))
  mesh = parallel.make_mesh(config.parallel.num_devices) if mesh is None else mesh
  state = state_lib.create_replicated_train_state(method, config.train, jax.random.key(0), mesh)
  checkpointer = checkpointing.Checkpointer(workdir, config, read_only=True)
  try:
    restored = checkpointer.restore(checkpointing.abstract(state))
  finally:
    checkpointer.close()
  if restored is None:
    raise no_checkpoint
  state, _ = restored
  return TrainedRun(corpus, method, state.params, int(state.step), mesh, config)
