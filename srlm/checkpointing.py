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
import re
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from srlm import config as config_lib
from srlm.errors import CheckpointError, StorageError


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
    """Starts writing checkpoint `step` (in the background). Raises StorageError, before
    writing anything, if the disk lacks the space: Orbax's own failure on a full disk comes
    from its writer threads, late and loud."""
    if step in self._manager.all_steps():
      return
    needed = sum(x.nbytes for x in jax.tree.leaves(state)) + 4 * 2**20  # + JSON, metadata
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      raise StorageError(
          f"no space for the checkpoint of step {step} in {self.directory}: it needs about "
          f"{needed / 2**20:.1f} MB and {free / 2**20:.1f} MB are free. The checkpoints "
          f"already there ({_steps(self._manager.all_steps())}) are intact: free space and "
          "re-run the same command to resume.")
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
    self._check_shapes(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          position=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupt(step, e) from None
    return restored["state"], dict(restored["position"])

  def check_resumable(self) -> None:
    """Before a training run touches the workdir: raises CheckpointError if the latest
    checkpoint cannot be resumed under this config: other shapes, or, when it stopped
    mid-epoch, another data order (batch size, buckets, ...: the saved batch index would skip
    or repeat sentences). A checkpoint at an epoch boundary resumes under any data order."""
    step = self._manager.latest_step()
    if step is None:
      return
    saved = self._check_shapes(step)
    position = self._read(step, "position")
    # (Checkpoints written before epoch_batches was recorded count as mid-epoch.)
    if 0 < position.get("batch", 0) < position.get("epoch_batches", float("inf")):
      self._check_fields(
          step, saved, config_lib.DATA_ORDER_FIELDS,
          f"stopped in the middle of epoch {position.get('epoch', 0) + 1} (at batch "
          f"{position['batch']}), and resuming it with another data order would skip or "
          "repeat sentences of that epoch")

  def _read(self, step: int, item: str) -> Any:
    try:
      return self._manager.restore(step, args=ocp.args.Composite(
          **{item: ocp.args.JsonRestore()}))[item]
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupt(step, e) from None

  def _check_shapes(self, step: int) -> config_lib.Config:
    """The config checkpoint `step` was saved under, after checking that its parameter and
    data shapes are this config's."""
    try:
      saved = config_lib.from_dict(self._read(step, "config"))
    except config_lib.ConfigError as e:
      raise self._corrupt(step, e) from None
    self._check_fields(step, saved, config_lib.shape_fields(self._config),
                       "was written under another config")
    return saved

  def _corrupt(self, step: int, error: Exception) -> CheckpointError:
    older = sorted(s for s in self._manager.all_steps() if s < step)
    hint = (f"Move it aside to resume from the previous checkpoint (step {older[-1]})"
            if older else "Remove it to start over")
    return CheckpointError(
        f"the checkpoint in {os.path.join(self.directory, str(step))} (step {step}) cannot be "
        f"read: its files are damaged or incomplete ({_reason(error)}). {hint}, or use a new "
        "--workdir.")

  def _check_fields(self, step: int, saved: config_lib.Config, fields, what: str) -> None:
    path = os.path.join(self.directory, str(step))
    before = config_lib.field_values(saved, fields)
    now = config_lib.field_values(self._config, fields)
    differ = {k: (before[k], now[k]) for k in now if before[k] != now[k]}
    if differ:
      listing = "; ".join(f"--config.{k}: checkpoint {a!r}, now {b!r}"
                          for k, (a, b) in differ.items())
      raise CheckpointError(
          f"the checkpoint in {path} {what} ({listing}). Use the flags it was trained with "
          "(config.json in the workdir keeps them), or a new --workdir to start a fresh run.")

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _reason(error: Exception) -> str:
  """The first sentence of an Orbax/TensorStore error, without object reprs."""
  text = (str(error).strip().splitlines() or [""])[0]
  text = re.split(r"\. See full TensorStore details|<bound method|<[\w.]+ object at", text)[0]
  text = text.strip(" .:")[:200]
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _steps(steps) -> str:
  steps = sorted(steps)
  return "steps " + ", ".join(map(str, steps)) if steps else "none"


def checkpoint_dir(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, "checkpoints"))


def abstract(tree: Any) -> Any:
  """Shapes and dtypes of a pytree, the restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
