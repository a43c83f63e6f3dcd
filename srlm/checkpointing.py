"""Orbax checkpoints of a training run: state, data position and config, saved atomically.

A checkpoint is `WORKDIR/checkpoints/<step>/` with three items:
  state     the TrainState pytree (step, params, opt_state), Orbax StandardSave;
  position  {"epoch": e, "batch": i}: the next batch to train on, JSON;
  config    the resolved config, JSON, checked against the current one before restoring.
Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
crash or `kill -9` mid-save leaves the previous checkpoints intact; the unfinished directory
is ignored (and removed on the next start). Nothing is ever unpickled.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from srlm import config as config_lib
from srlm.errors import CheckpointError


class Checkpointer:
  """Saves and restores (state, position) for one workdir."""

  def __init__(self, workdir: str, config: config_lib.Config, read_only: bool = False):
    """read_only (evaluation, analyses): never writes, not even Orbax's metadata; the
    checkpoint directory must exist."""
    self.directory = checkpoint_dir(workdir)
    self._config = config
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.train.max_checkpoints, create=not read_only,
        cleanup_tmp_directories=not read_only, read_only=read_only)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "position", "config"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, position: dict[str, int]) -> None:
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        position=ocp.args.JsonSave(position),
        config=ocp.args.JsonSave(config_lib.to_dict(self._config))))

  def restore(self, abstract_state: Any) -> tuple[Any, dict[str, int]] | None:
    """The latest checkpoint as (state, position), or None when there is none.

    Raises CheckpointError if it was written under a config with other shapes, or cannot be
    read.
    """
    step = self._manager.latest_step()
    if step is None:
      return None
    path = os.path.join(self.directory, str(step))
    try:
      saved = self._manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()))["config"]
    except Exception as e:  # pylint: disable=broad-except
      raise _corrupt(path, step, self._manager.all_steps(), e) from None
    try:
      saved_fields = config_lib.shape_fields(config_lib.from_dict(saved))
    except Exception as e:  # pylint: disable=broad-except
      raise _corrupt(path, step, self._manager.all_steps(), e) from None
    current = config_lib.shape_fields(self._config)
    differ = {k: (saved_fields[k], current[k]) for k in current if saved_fields[k] != current[k]}
    if differ:
      listing = "; ".join(f"--config.{k}: checkpoint {a!r}, now {b!r}"
                          for k, (a, b) in differ.items())
      raise CheckpointError(
          f"the checkpoint in {path} was written under another config ({listing}). "
          "Use the flags it was trained with (see config.json in the workdir), or a new "
          "--workdir to start a fresh run.")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          position=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise _corrupt(path, step, self._manager.all_steps(), e) from None
    return restored["state"], dict(restored["position"])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _corrupt(path: str, step: int, steps, error: Exception) -> CheckpointError:
  older = sorted(s for s in steps if s < step)
  hint = (f"Move it aside to resume from the previous checkpoint (step {older[-1]})"
          if older else "Remove it to start over")
  first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return CheckpointError(
      f"the checkpoint in {path} (step {step}) cannot be read: {first_line[:300]}. {hint}, "
      "or use a new --workdir.")


def checkpoint_dir(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, "checkpoints"))


def abstract(tree: Any) -> Any:
  """Shapes and dtypes of a pytree, the restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
