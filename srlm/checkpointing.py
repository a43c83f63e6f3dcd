"""Orbax checkpoints of a training run: state, data position and config, saved atomically.

A checkpoint is `WORKDIR/checkpoints/<step>/` with three items:
  state     the TrainState pytree (step, params, opt_state), Orbax StandardSave;
  position  {"epoch": e, "batch": i}: the next batch to train on, JSON;
  config    the resolved config, JSON, checked against the current one before restoring.
Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
crash or `kill -9` mid-save leaves the previous checkpoints intact; the unfinished directory
is ignored (and removed on the next start). Nothing is ever unpickled.
"""

import contextlib
import logging
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
    if read_only:
      # Every option a read-only manager would override (with a warning each) is set so.
      options = ocp.CheckpointManagerOptions(
          read_only=True, save_interval_steps=0, max_to_keep=None, create=False,
          cleanup_tmp_directories=False)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=config.train.max_checkpoints,
                                             create=True, cleanup_tmp_directories=True)
    with _without_read_only_notice():
      self._manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "position": ocp.JsonCheckpointHandler(),
                         "config": ocp.JsonCheckpointHandler()})

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
    self._check_compatible(step, abstract_state)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          position=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupt(step, e) from None
    return restored["state"], dict(restored["position"])

  def check_resumable(self, abstract_state: Any) -> None:
    """Before a training run touches the workdir: raises CheckpointError if the latest
    checkpoint cannot be resumed under this config into a state of abstract_state's shapes:
    another corpus or method, other shapes, or, when it stopped mid-epoch, another data order
    (batch size, buckets, ...: the saved batch index would skip or repeat sentences). A
    checkpoint at an epoch boundary resumes under any data order."""
    step = self._manager.latest_step()
    if step is None:
      return
    saved = self._check_compatible(step, abstract_state)
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

  def _check_compatible(self, step: int, abstract_state: Any) -> config_lib.Config:
    """The config checkpoint `step` was saved under, after checking that it holds this
    config's corpus and method (config_lib.IDENTITY_FIELDS) and a state of abstract_state's
    shapes: the shapes come from what this config's init produces, so every field that shapes
    a parameter (sri_learned's chain length among them) is covered without a list of them."""
    try:
      saved = config_lib.from_dict(self._read(step, "config"))
    except config_lib.ConfigError as e:
      raise self._corrupt(step, e) from None
    try:
      stored = self._manager.item_metadata(step)["state"]
      if stored is None:
        raise ValueError("no metadata of the state")
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupt(step, e) from None
    what = "was written under another config"
    self._check_fields(step, saved, config_lib.IDENTITY_FIELDS, what)
    differ = _shape_differences(stored, abstract_state)
    if differ:
      # Name the flags of the model and the chain that differ: the ones that can reshape it.
      values, now = config_lib.to_dict(saved), config_lib.to_dict(self._config)
      suspects = [f"{section}.{name}" for section in ("model", "langevin")
                  for name in now[section] if values[section].get(name) != now[section][name]]
      shapes = "; ".join(differ[:3]) + (f"; {len(differ) - 3} more" if len(differ) > 3 else "")
      self._check_fields(step, saved, suspects, what,
                         f": its parameters have other shapes ({shapes})")
    return saved

  def _corrupt(self, step: int, error: Exception) -> CheckpointError:
    older = sorted(s for s in self._manager.all_steps() if s < step)
    hint = (f"Move it aside to resume from the previous checkpoint (step {older[-1]})"
            if older else "Remove it to start over")
    return CheckpointError(
        f"the checkpoint in {os.path.join(self.directory, str(step))} (step {step}) cannot be "
        f"read: its files are damaged or incomplete ({_reason(error)}). {hint}, or use a new "
        "--workdir.")

  def _check_fields(self, step: int, saved: config_lib.Config, fields, what: str,
                    detail: str = "") -> None:
    """Raises CheckpointError naming the fields whose values differ from the checkpoint's, if
    any do; with a detail (why they must agree), always."""
    path = os.path.join(self.directory, str(step))
    before = config_lib.field_values(saved, fields)
    now = config_lib.field_values(self._config, fields)
    differ = {k: (before[k], now[k]) for k in now if before[k] != now[k]}
    if differ or detail:
      listing = "; ".join(f"--config.{k}: checkpoint {a!r}, now {b!r}"
                          for k, (a, b) in differ.items())
      raise CheckpointError(
          f"the checkpoint in {path} {what}" + (f" ({listing})" if listing else "") + detail
          + ". Use the flags it was trained with (config.json in the workdir keeps them), or "
          "a new --workdir to start a fresh run.")

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


class _ReadOnlyNotice(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Given directory is read only")


@contextlib.contextmanager
def _without_read_only_notice():
  """Orbax warns that a read-only manager's directory is read only, whatever the options: a
  line no user can act on (evaluation opens checkpoints read-only on purpose)."""
  notice = _ReadOnlyNotice()
  logger = logging.getLogger("absl")
  logger.addFilter(notice)
  try:
    yield
  finally:
    logger.removeFilter(notice)


def _shape_differences(stored: Any, abstract_state: Any) -> list[str]:
  """'path: checkpoint shape, now shape' for each array whose shape differs or that only one
  side has (Orbax's stored tree against the state this config makes)."""
  def shapes(tree):
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                     for k in path): tuple(leaf.shape) for path, leaf in leaves}
  before, now = shapes(stored), shapes(abstract_state)
  names = sorted(set(before) | set(now), key=lambda n: (not n.startswith("params"), n))
  return [f"{name}: checkpoint {before.get(name, 'none')}, now {now.get(name, 'none')}"
          for name in names if before.get(name) != now.get(name)]


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
