"""Where results go and how progress reads: metrics.jsonl, atomic files, figures, durations.

The one "only process 0 writes" rule lives here: every writer below is a no-op on the other
processes of a multi-process run, so callers never check.
"""

import json
import logging
import math
import os
import subprocess
import tempfile
import threading
from typing import Any

import jax
import numpy as np


# Held while a result or journal file is written: a signal's exit (srlm.stopping) waits for it,
# so a stopped run never leaves half a line or a stray temporary file.
WRITE_LOCK = threading.RLock()
_UMASK = os.umask(0o022)  # read once (os.umask both sets and returns it), and put back
os.umask(_UMASK)


def provenance() -> dict[str, Any]:
  """What produced a result: srlm's version, its own commit (with "+changes" if its tree has
  uncommitted changes) when srlm runs from its own git checkout, else None (an archive, a wheel
  or a bundle, even one unpacked inside another repository, has no commit of its own), and the
  float32 matmul precision in force."""
  import srlm  # pylint: disable=import-outside-toplevel
  from srlm import runtime  # pylint: disable=import-outside-toplevel
  source = os.path.dirname(os.path.dirname(os.path.abspath(srlm.__file__)))

  def git(*args: str) -> str | None:
    try:
      out = subprocess.run(["git", "-C", source, *args], capture_output=True, text=True,
                           timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
      return None
    return out.stdout.strip() if out.returncode == 0 else None

  commit = None
  top = git("rev-parse", "--show-toplevel")
  if top and os.path.realpath(top) == os.path.realpath(source):  # srlm's own repository
    commit = git("rev-parse", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no", "--", "srlm"):
      commit += "+changes"
  return {"srlm_version": srlm.__version__, "srlm_commit": commit,
          "matmul_precision": runtime.precision_in_force()}


def is_writer() -> bool:
  """Whether this process writes files (metrics, results, plots): process 0 only."""
  return jax.process_index() == 0


class MetricWriter:
  """Appends one JSON object per line to WORKDIR/metrics.jsonl and writes the same numbers as
  TensorBoard scalars ("<split>/<name>" at the record's step) to event files in WORKDIR, so
  that `tensorboard --logdir workdirs/` shows every run. close() flushes the event file."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._workdir = workdir
    self._board = None
    self._purge_step = None

  def write(self, record: dict[str, Any]) -> None:
    if not is_writer():
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._board is None:
      import tensorboardX  # pylint: disable=import-outside-toplevel
      # It warns at every non-finite value; a diverging run is reported by srlm itself.
      logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
      # purge_step: TensorBoard hides what an earlier, killed run logged from that step on.
      self._board = tensorboardX.SummaryWriter(self._workdir, purge_step=self._purge_step)
    for name, value in record.items():
      if name not in ("step", "epoch", "split") and isinstance(value, (int, float)):
        self._board.add_scalar(f"{record['split']}/{name}", value, record["step"])

  def close(self) -> None:
    if self._board is not None:
      self._board.close()
      self._board = None

  def resume_at(self, step: int, keep_valid: bool) -> None:
    """Drops the records that a run resuming after `step` will write again: every record of a
    later step, and the validation record of `step` itself unless keep_valid (the checkpoint
    was taken after that epoch's validation). So each (step, split) appears once."""
    self._purge_step = step + 1
    if not is_writer() or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    kept = []
    for line in lines:
      try:
        record = json.loads(line)
      except ValueError:  # a line cut short by a crash
        continue
      if record["step"] < step or (record["step"] == step and
                                   (keep_valid or record["split"] != "valid")):
        kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines):
      _replace_atomically(self.path, lambda f: f.writelines(kept), "w")


def _replace_atomically(path: str, write, mode: str) -> None:
  """Writes through write(file) to a temporary file, then renames it: readers never see half a
  file, and a crash leaves the previous version."""
  directory, name = os.path.split(path)
  with WRITE_LOCK:
    # A name of its own (not a shared "<path>.tmp"): two runs writing into one workdir at once
    # (evaluations take no lock) never write into each other's temporary file.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    try:
      with open(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
        write(f)
      os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would (mkstemp makes 0600)
      os.replace(tmp, path)
    except BaseException:
      os.remove(tmp)
      raise


def write_json_atomic(path: str, value: Any) -> None:
  if is_writer():
    _replace_atomically(path, lambda f: json.dump(value, f, indent=2, sort_keys=True), "w")


def write_lines(path: str, lines: list[str]) -> None:
  """A UTF-8 text file, one line each."""
  if is_writer():
    _replace_atomically(path, lambda f: f.write("\n".join(lines) + "\n"), "w")


def write_npy(path: str, array: np.ndarray) -> None:
  if is_writer():
    _replace_atomically(path, lambda f: np.save(f, array), "wb")


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  if is_writer():
    _replace_atomically(path, lambda f: np.savez(f, **arrays), "wb")


def make_dirs(path: str) -> None:
  if is_writer():
    os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
  """Deletes a file if it exists."""
  if is_writer() and os.path.exists(path):
    os.remove(path)


def save_figure(figure, path: str) -> str:
  """A matplotlib Figure as a PNG; returns the path."""
  if is_writer():
    _replace_atomically(path, lambda f: figure.savefig(f, format="png", dpi=100), "wb")
  return path


def safe_exp(x: float) -> float:
  """exp(x), inf where it would overflow (a perplexity of a diverging run)."""
  return math.exp(x) if x < 709.0 else float("inf")


def format_seconds(seconds: float) -> str:
  """H:MM:SS, for progress lines and ETAs."""
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
